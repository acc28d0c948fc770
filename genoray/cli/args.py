"""The ``genoray`` argument parser: every setting flag is generated from the dataclasses of
:mod:`genoray.config` (:mod:`genoray.cli.flags`); each command names the config groups it
exposes (:data:`COMMAND_GROUPS`). The only flags written here are paths, the command's inputs
and outputs, and output-mode switches (:data:`CLI_ONLY`: they are not settings of any stage)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping

from genoray import __version__
from genoray.cli.exitcodes import EXIT_CODES, EXIT_EMPTY
from genoray.cli.flags import Group, add_group
from genoray.config import (
    EmbedConfig,
    EncoderChoice,
    EvaluateConfig,
    HeadConfig,
    HFConfig,
    IndexConfig,
    KmerConfig,
    PlanConfig,
    PositionConfig,
    PredictConfig,
    PublishConfig,
    ReadConfig,
    ReindexConfig,
    RemoteCodeConfig,
    ServeConfig,
    ShiftConfig,
    ShiftSelection,
)

READ = Group("read", ReadConfig, names={"batch_size": "read-batch-size"}, skip=("split_cutoffs",),
             title="reading, cleaning and split names (ReadConfig, CleanPolicy)")
ENCODER = Group("encoder", EncoderChoice, title="encoder (EncoderChoice)")
KMER = Group("kmer", KmerConfig, skip=("position",), title="k-mer encoder (--encoder kmer or kmer-pos; KmerConfig)")
POS = Group("pos", PositionConfig, prefix="pos-", title="position block (--encoder kmer-pos; PositionConfig)")
HF = Group("hf", HFConfig, prefix="hf-", skip=("model",), names={"trust_remote_code": "trust-remote-code"},
           title="transformers encoder (--encoder hf:<model>; HFConfig)")
EMBED = Group("embed", EmbedConfig, title="embedding job (EmbedConfig)")
_INDEX_NAMES: dict[str, str | tuple[str, ...]] = {"index_type": ("type", "index-type"), "seed": "index-seed",
                                                  "split": ("train-split", "split")}
INDEX = Group("index", IndexConfig, names=_INDEX_NAMES, title="index (IndexConfig)")
# where the data's split names are given (ReadConfig), the index is built on the training split
INDEX_OF_READ = Group("index", IndexConfig, names=_INDEX_NAMES, skip=("split", "overwrite"), title=INDEX.title)
# plan: the settings of `genoray index` that shape the index (not how a rerun treats an existing one)
INDEX_OF_PLAN = Group("index", IndexConfig, names=_INDEX_NAMES, skip=("overwrite",), title=INDEX.title)
PLAN = Group("plan", PlanConfig, names={"cluster.memory_per_node_mb": "memory-per-node-mb"},
             title="what to plan for (PlanConfig, ClusterSpec)")
HEAD = Group("head", HeadConfig, names={"seed": "head-seed"}, title="fused head (HeadConfig)")
# quickstart writes a fresh work dir (its --overwrite would be embed's)
HEAD_OF_QUICKSTART = Group("head", HeadConfig, names={"seed": "head-seed"}, skip=("overwrite",), title=HEAD.title)
EVALUATE = Group("evaluate", EvaluateConfig, names={"split": ("test-split", "split")},
                 title="evaluation (EvaluateConfig)")
EVALUATE_OF_READ = Group("evaluate", EvaluateConfig, skip=("split",), title=EVALUATE.title)
PREDICT = Group("predict", PredictConfig, title="batch prediction (PredictConfig)")
PUBLISH = Group("publish", PublishConfig, title="bundle layout (PublishConfig)")
REINDEX = Group("reindex", ReindexConfig,
                names={"index.index_type": ("type", "index-type"), "index.seed": "index-seed",
                       "head.seed": "head-seed"}, skip=("index.split", "eval_split", "index.overwrite", "head.overwrite"),
                title="gate, index, head and embedding job (ReindexConfig)")
SERVE = Group("serve", ServeConfig, skip=("root",), negative={"require_key": ("no-auth",)},
              title="service (ServeConfig, ServiceLimits)")
SHIFT = Group("shift", ShiftConfig, title="shift tests (ShiftConfig)")
SHIFT_SELECT = Group("select", ShiftSelection, title="rows compared (ShiftSelection)")
ENCODER_GROUPS = (ENCODER, KMER, POS, HF)
TRUST = Group("trust", RemoteCodeConfig, title="model code (RemoteCodeConfig)")
# the groups of each command (a test checks that every config field has a flag somewhere)
COMMAND_GROUPS: dict[str, tuple[Group, ...]] = {
    "quickstart": (READ, *ENCODER_GROUPS, EMBED, INDEX_OF_READ, HEAD_OF_QUICKSTART, EVALUATE_OF_READ),
    "embed": (READ, *ENCODER_GROUPS, EMBED),
    "index": (INDEX,),
    "plan": (PLAN, ENCODER, INDEX_OF_PLAN),  # the index settings of `genoray index`, defaults included
    "train": (HEAD, TRUST),
    "evaluate": (EVALUATE,),
    "predict": (PREDICT,),
    "publish": (PUBLISH, TRUST),
    "reindex": (READ, *ENCODER_GROUPS, REINDEX),
    "serve": (SERVE,),
    "shift": (SHIFT_SELECT, SHIFT),
}
#: flags that are not settings: paths and inputs (no default but none), output modes, process control
CLI_ONLY = frozenset({
    "help", "verbose", "quiet", "config", "version", "memory_per_node", "data", "workdir", "out", "json", "keep", "ray", "no_ray", "allow_empty",
    "encoder_from", "index", "head", "target", "target_source", "store", "root", "work", "bundles", "verify", "plot",
})


class RemovedFlag(argparse.Action):
    """A flag that was renamed when its unit changed (``--memory-per-node`` in GB is now
    ``--memory-per-node-mb``): a usage error naming the new flag and the converted value, where
    argparse would otherwise take the old name as an abbreviation of the new one and misread it."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            mb = f"{float(str(values)) * 1024:g}"
        except ValueError:
            mb = "MB"
        parser.error(f"{option_string} (GB) is now --memory-per-node-mb (MB, the unit of every memory flag): "
                     f"give --memory-per-node-mb {mb}")


def _add_groups(p: argparse.ArgumentParser, command: str) -> None:
    for g in COMMAND_GROUPS[command]:
        add_group(p, g)


def _add_keep(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keep", action="store_true",
                   help="keep the temp dir of the local Ray this command starts (gr-ray-*; removed at exit otherwise)")


def _add_encoder_from(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder-from", metavar="STORE|INDEX|BUNDLE",
                   help="reuse the (fitted) encoder of an embedding store, index or bundle root, so the new store "
                        "is comparable with it (same fingerprint; shift and evaluate require that)")


def build_parser(commands: Mapping[str, Callable[[argparse.Namespace], int]]) -> argparse.ArgumentParser:
    """The parser of every command; ``commands`` maps a command name to the function that runs it."""
    epilog = "exit status:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES.items())
    parser = argparse.ArgumentParser(prog="genoray", description="Retrieval-augmented genomic prediction.",
                                     epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log progress and Ray's own messages to stderr, tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="print only the result and errors (no notes, warnings or summaries on stderr)")
    parser.add_argument("--config", metavar="FILE",
                        help="YAML file of the command's flags (keys: long flag names; the command line wins)")
    parser.add_argument("--version", action="version", version=f"genoray {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("quickstart", help="embed, index, train and evaluate one labeled file end to end")
    p.add_argument("--data", help="labeled Parquet/CSV/FASTA with train/test splits (default: bundled E. coli promoters)")
    p.add_argument("--workdir", help="where stores, indexes and heads are written (default: a temp dir, removed at "
                                     "exit unless --keep)")
    p.add_argument("--no-ray", action="store_true", help="embed in this process instead of on local Ray")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temp work dir and Ray's temp dir at exit")
    _add_groups(p, "quickstart")
    p.set_defaults(func=commands["quickstart"])

    p = sub.add_parser(
        "embed", help="embed sequence files into an embedding store (resumable)",
        description="Embed sequence files on a Ray actor pool. Rerunning into the same --out skips finished "
                    "units, so an interrupted job resumes; a store that holds records this run would not write "
                    "(other inputs or settings) is refused unless --append or --overwrite. Exit status: 0 complete, 3 partial (some files "
                    "could not be read; they are listed), 6 nothing written (--allow-empty: 0), 2 error, 70 bug, "
                    "143 stopped by SIGTERM (130 SIGINT; rerun to resume).")
    p.add_argument("inputs", nargs="+", help="FASTA/FASTQ(.gz), Parquet or CSV/TSV files, directories or globs; "
                                             "- reads stdin (FASTA, FASTQ or TSV, sniffed)")
    p.add_argument("--out", required=True, help="store directory (new, one to resume, or see --append/--overwrite)")
    _add_encoder_from(p)
    p.add_argument("--allow-empty", action="store_true",
                   help=f"exit 0 when nothing is written (default: exit {EXIT_EMPTY})")
    _add_keep(p)
    p.add_argument("--no-ray", action="store_true", help="embed in this process instead of on Ray")
    _add_groups(p, "embed")
    p.set_defaults(func=commands["embed"])

    p = sub.add_parser("index", help="build a FAISS index from an embedding store")
    p.add_argument("store")
    p.add_argument("--out", required=True, help="new index directory")
    p.add_argument("--ray", action="store_true",
                   help="build on the Ray cluster (train once, add per store partition; RAY_ADDRESS or a local Ray)")
    _add_groups(p, "index")
    p.set_defaults(func=commands["index"])

    p = sub.add_parser("plan", help="predict time and memory of embedding, index build, serving and head fit",
                       description="genoray plan --n N --dim D (or --store STORE, or --index DIR): predicted peak "
                                   "memory and time of each stage on the given cluster, every search priced at the "
                                   "nprobe the recall tuning picks (--probe-fraction, or a built index's). "
                                   "Exit status: 0 fits, 4 does not fit.")
    p.add_argument("--store", help="plan for this embedding store instead of --n/--dim")
    p.add_argument("--index", help="a built index: its tuned nprobe prices every search (and, without --n/--dim or "
                                   "--store, the plan is for its rows, dim and factory)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--memory-per-node", "--memory-per-node-gb", action=RemovedFlag, help=argparse.SUPPRESS)
    _add_groups(p, "plan")
    p.set_defaults(func=commands["plan"])

    p = sub.add_parser("train", help="fit the fused head (kNN vote + linear head by default; --head trees|auto opt-in)",
                       description="Fit the fused head and its OOD scorer on the rows the index holds (the split "
                                   "its manifest records).")
    p.add_argument("store")
    p.add_argument("--index", required=True, help="index built from the same store")
    p.add_argument("--out", required=True, help="new head directory")
    _add_groups(p, "train")
    p.set_defaults(func=commands["train"])

    p = sub.add_parser(
        "evaluate", help="score a trained head on a held-out split, or run a study (STUDY.yaml)",
        description="genoray evaluate STORE --index I --head H: majority / kNN / linear / fused metrics on a split. "
                    "genoray evaluate STUDY.yaml --out DIR: methods x datasets x protocols (within, cross, pooled) "
                    "with bootstrap CIs and cost, written to DIR/report.md, DIR/report.json and DIR/report.html.")
    p.add_argument("target", help="an embedding store, or a study YAML file (see examples/study.yaml)")
    p.add_argument("--index")
    p.add_argument("--head")
    p.add_argument("--json", action="store_true", help="print the report as JSON (strict: undefined values are null)")
    p.add_argument("--out", help="report directory: a study's report.md/report.json/report.html; for a store, "
                                 "evaluation.json, report.html (confusion matrix, reliability, PR curves, score "
                                 "distributions) and each chart as .svg")
    _add_groups(p, "evaluate")
    p.set_defaults(func=commands["evaluate"])

    p = sub.add_parser("predict", help="predict labels with neighbours and OOD scores (JSON lines, TSV or Parquet)",
                       description="Read the input files with the cleaning policy the index records (as the "
                                   "service does) and predict every accepted record.")
    p.add_argument("inputs", nargs="+", help="sequence files, as for embed; - reads stdin (FASTA, FASTQ or TSV)")
    p.add_argument("--index", required=True)
    p.add_argument("--head", required=True)
    p.add_argument("--out", help="write predictions here instead of stdout (- or absent: stdout; required for "
                                 "parquet)")
    p.add_argument("--target", nargs="+", help="unlabeled sample of the target data (any supported format; labels "
                   "ignored): re-weight to its class priors when their bootstrap interval excludes the source's and "
                   "the shift looks like a label shift (docs/shift.md)")
    p.add_argument("--target-source", nargs="+", help="with --target: labeled source rows (e.g. a held-out part of "
                   "the training data; rows whose id is in the index do not vote for themselves): also re-fit the "
                   "temperature on them weighted by a domain classifier's density ratio, when that is supported")
    p.add_argument("--allow-empty", action="store_true",
                   help=f"exit 0 when nothing is predicted (default: exit {EXIT_EMPTY})")
    _add_groups(p, "predict")
    p.set_defaults(func=commands["predict"])

    p = sub.add_parser("publish", help="write a verified bundle and make it CURRENT, or roll back to a version")
    p.add_argument("root", help="bundle root directory")
    p.add_argument("--index", help="index directory for a new version")
    p.add_argument("--head", help="head directory for a new version")
    p.add_argument("--version", help="publish this existing version instead (rollback)")
    p.add_argument("--target", nargs="+", help="unlabeled sample of the data this bundle will serve (any supported "
                   "format; labels ignored): re-weight to its class priors when the shift is significant")
    _add_groups(p, "publish")
    p.set_defaults(func=commands["publish"])

    p = sub.add_parser("bundles", help="list the versions of a bundle root and which one is CURRENT")
    p.add_argument("root", help="bundle root directory")
    p.add_argument("--verify", action="store_true", help="check every file of every version against its sha256")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=commands["bundles"])

    p = sub.add_parser(
        "reindex", help="nightly: embed new files, rebuild, gate and publish",
        description="Embed the input files into WORK/store (files done on earlier runs are skipped; the store's "
                    "encoder and cleaning policy are used), build a new index and head, and publish them to BUNDLES "
                    "if the gate passes. Exit status: 0 published, 4 gate failed (the current bundle keeps serving; "
                    "WORK/builds/<version>/gate.json says why), 143 stopped by SIGTERM (130 SIGINT; nothing published, "
                    "rerun to resume).")
    p.add_argument("inputs", nargs="+", help="all labeled files (old and new)")
    p.add_argument("--work", required=True, help="working directory (long-lived store + builds)")
    p.add_argument("--bundles", required=True, help="bundle root the service watches")
    _add_encoder_from(p)
    p.add_argument("--no-ray", action="store_true", help="embed in this process instead of on Ray")
    _add_keep(p)
    _add_groups(p, "reindex")
    p.set_defaults(func=commands["reindex"])

    p = sub.add_parser("serve", help="serve the CURRENT bundle over HTTP with Ray Serve",
                       description="Replicas load ROOT/CURRENT and follow it: publishing a new version (genoray "
                                   "publish / reindex) swaps every replica without downtime. API keys come from "
                                   "GENORAY_API_KEYS (comma-separated).")
    p.add_argument("root", help="bundle root directory")
    _add_keep(p)
    _add_groups(p, "serve")
    p.set_defaults(func=commands["serve"])

    p = sub.add_parser("shift", help="test whether new embeddings are distributed like a reference",
                       description="MMD permutation test, classifier two-sample test and kNN OOD fraction between "
                                   "two stores made with the same encoder. Exit status: 0 no shift, 5 shift.")
    p.add_argument("reference", help="reference embedding store")
    p.add_argument("new", help="new embedding store")
    p.add_argument("--plot", help="write a PCA scatter PNG here (needs genoray[plot])")
    p.add_argument("--out", help="report directory: shift.json, report.html (the tests, the embedding map of reference "
                                 "vs new, OOD share per group) and each chart as .svg")
    _add_groups(p, "shift")
    p.set_defaults(func=commands["shift"])

    p = sub.add_parser(
        "convert-weights", help="convert a pytorch_model.bin (pickle) checkpoint to safetensors, safely",
        description="Read SRC/pytorch_model.bin with torch's weights-only unpickler (anything else in the "
                    "pickle is refused, with the reason; nothing is executed), write DST/model.safetensors, copy "
                    "the config, tokenizer and model-code files, and print the weights sha256 that an "
                    "hf:DST encoder spec pins.")
    p.add_argument("src", help="model directory holding pytorch_model.bin")
    p.add_argument("dst", help="new directory for the converted model")
    p.set_defaults(func=commands["convert-weights"])
    _common_flags(sub.choices)
    return parser


def _common_flags(parsers: Mapping[str, argparse.ArgumentParser]) -> None:
    """One grammar for every command: ``-v``, ``-q`` and ``--config`` also after the command name,
    and ``--json`` on every command that prints a result (those without a text form print JSON anyway)."""
    for name, p in parsers.items():
        # SUPPRESS: an absent flag must not overwrite a -v given before the command name
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="as genoray -v: log progress and Ray's own messages, tracebacks on errors")
        p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="as genoray -q: only the result and errors (not with -v)")
        p.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                       help="YAML file whose keys are this command's long flag names (- or _) and values as on "
                            "the command line (a list for a repeatable flag or the inputs); flags given on the "
                            "command line win (docs/usage.md)")
        if "--json" not in p._option_string_actions:
            p.add_argument("--json", action="store_true", help=(
                "once it answers, also print one JSON line on stdout (root, URL, ingress, ports)" if name == "serve"
                else "print the result as JSON (this command's only form)"))
