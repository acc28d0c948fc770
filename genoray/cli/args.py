"""The ``genoray`` argument parser: config flags generated from the dataclasses of
:mod:`genoray.config` (see :mod:`genoray.flags`), the groups each command exposes, and the
helpers that turn parsed flags into configs and encoders."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping

from genoray.config import (
    EmbedConfig,
    HeadConfig,
    HFConfig,
    IndexConfig,
    KmerConfig,
    PositionConfig,
    ReadConfig,
    ReindexConfig,
    ServeConfig,
    ShiftConfig,
)
from genoray.exitcodes import EXIT_CODES, EXIT_EMPTY
from genoray.flags import Group, add_group, build

# Every config flag is generated from these dataclasses (genoray.flags): a default lives only in config.py.
READ = Group("read", ReadConfig, names={"batch_size": "read-batch-size"}, skip=("split_names", "split_cutoffs"),
             title="reading and cleaning (ReadConfig, CleanPolicy)")
KMER = Group("kmer", KmerConfig, skip=("position",), title="k-mer encoder (--encoder kmer or kmer-pos; KmerConfig)")
POS = Group("pos", PositionConfig, prefix="pos-", title="position block (--encoder kmer-pos; PositionConfig)")
HF = Group("hf", HFConfig, prefix="hf-", skip=("model",), names={"trust_remote_code": "trust-remote-code"},
           title="transformers encoder (--encoder hf:<model>; HFConfig)")
EMBED = Group("embed", EmbedConfig, title="embedding job (EmbedConfig)")
INDEX = Group("index", IndexConfig, names={"index_type": ("type", "index-type"), "seed": "index-seed",
                                          "split": ("train-split", "split")},
              title="index (IndexConfig)")
# plan: --memory-budget-mb defaults to half the cluster's memory there, so the command declares it itself
PLAN_INDEX = Group("index", IndexConfig, names=INDEX.names, skip=("memory_budget_mb",), title=INDEX.title)
HEAD = Group("head", HeadConfig, names={"seed": "head-seed"}, title="fused head (HeadConfig)")
REINDEX = Group("reindex", ReindexConfig,
                names={"index.index_type": ("type", "index-type"), "index.seed": "index-seed",
                       "head.seed": "head-seed", "index.split": ("train-split", "split"),
                       "eval_split": ("test-split", "eval-split")},
                title="gate, index, head and embedding job (ReindexConfig)")
SERVE = Group("serve", ServeConfig, skip=("root",), negative={"require_key": ("no-auth",)},
              title="service (ServeConfig, ServiceLimits)")
SHIFT = Group("shift", ShiftConfig, title="shift tests (ShiftConfig)")
ENCODER_GROUPS = (KMER, POS, HF)
# the groups of each command (the test checks that every config field has a flag somewhere)
COMMAND_GROUPS: dict[str, tuple[Group, ...]] = {
    "quickstart": (READ, *ENCODER_GROUPS, EMBED, INDEX, HEAD),
    "embed": (READ, *ENCODER_GROUPS, EMBED),
    "index": (INDEX,),
    "plan": (PLAN_INDEX,),
    "train": (HEAD,),
    "reindex": (READ, *ENCODER_GROUPS, REINDEX),
    "serve": (SERVE,),
    "shift": (SHIFT,),
}


def _add_encoder_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", default=None,
                   help="kmer (default: k-mer spectrum + GC + z-curve), kmer-pos (adds position-aware "
                        "features for fixed-window tasks), hf:<hub id or local model dir>, or "
                        "hf:<model>+kmer / hf:<model>+kmer-pos (the model's vector joined with the k-mer one)")
    p.add_argument("--encoder-from", metavar="STORE|INDEX|BUNDLE",
                   help="reuse the (fitted) encoder of an embedding store, index or bundle root, so the new store "
                        "is comparable with it (same fingerprint; shift and evaluate require that)")


def _add_groups(p: argparse.ArgumentParser, command: str) -> None:
    for g in COMMAND_GROUPS[command]:
        add_group(p, g)


def _read_cfg(a: argparse.Namespace, train: str | None, test: str | None) -> ReadConfig:
    """The ReadConfig of the flags; ``--test-fraction`` names its splits after the train/test splits."""
    return build(a, READ, split_names=(_split(train) or "train", _split(test) or "test"))


def _add_keep(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keep", action="store_true",
                   help="keep the temp dir of the local Ray this command starts (gr-ray-*; removed at exit otherwise)")


def _add_split_args(p: argparse.ArgumentParser, train: bool = True) -> None:
    if train:
        p.add_argument("--train-split", default="train",
                       help="split the encoder is fitted on ('all': every row) and the name --test-fraction gives "
                            "the rest (default: train)")
    p.add_argument("--test-split", default="test",
                   help="held-out split, and the name --test-fraction gives the held-out part (default: test)")


def _encoder(a: argparse.Namespace, name: str | None = None):
    """The encoder named by ``--encoder`` with the settings of its flag group."""
    from genoray.encoders import encoder_from_artifact, encoder_from_name

    if getattr(a, "encoder_from", None):
        if name or a.encoder:
            raise ValueError("give --encoder or --encoder-from, not both")
        return encoder_from_artifact(a.encoder_from)
    name = name or a.encoder or "kmer"
    if name.startswith("hf:"):  # hf:<model>, or hf:<model>+kmer / +kmer-pos (fusion)
        base, plus, suffix = name.rpartition("+")
        model = base[3:] if plus and suffix in ("kmer", "kmer-pos") else name[3:]
        return encoder_from_name(name, hf=build(a, HF, model=model), kmer=build(a, KMER), position=build(a, POS))
    return encoder_from_name(name, kmer=build(a, KMER), position=build(a, POS))


def _split(name: str | None) -> str | None:
    """A split name from the command line: ``all`` (or ``none``) means every row."""
    return None if name is None or name.lower() in ("all", "none") else name


def build_parser(commands: Mapping[str, Callable[[argparse.Namespace], int]]) -> argparse.ArgumentParser:
    """The parser of every command; ``commands`` maps a command name to the function that runs it."""
    from genoray import __version__

    epilog = "exit status:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES.items())
    parser = argparse.ArgumentParser(prog="genoray", description="Retrieval-augmented genomic prediction.",
                                     epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log progress and Ray's own messages to stderr, tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"genoray {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("quickstart", help="embed, index, train and evaluate one labeled file end to end")
    p.add_argument("--data", help="labeled Parquet/CSV/FASTA with train/test splits (default: bundled E. coli promoters)")
    p.add_argument("--workdir", help="where stores, indexes and heads are written (default: a temp dir, removed at "
                                     "exit unless --keep)")
    p.add_argument("--encoder", default="kmer", help="kmer, kmer-pos, both (kmer and kmer-pos side by side) or hf:<model>")
    p.add_argument("--no-ray", action="store_true", help="embed in this process instead of on local Ray")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temp work dir and Ray's temp dir at exit")
    _add_split_args(p, train=False)
    _add_groups(p, "quickstart")
    p.set_defaults(func=commands["quickstart"])

    p = sub.add_parser(
        "embed", help="embed sequence files into an embedding store (resumable)",
        description="Embed sequence files on a Ray actor pool. Rerunning into the same --out skips finished "
                    "units, so an interrupted job resumes. Exit status: 0 complete, 3 partial (some files "
                    "could not be read; they are listed), 6 nothing written (--allow-empty: 0), 2 error, 70 bug.")
    p.add_argument("inputs", nargs="+", help="FASTA/FASTQ(.gz), Parquet or CSV/TSV files, directories or globs")
    p.add_argument("--out", required=True, help="store directory (new, or one to resume)")
    _add_encoder_args(p)
    p.add_argument("--allow-empty", action="store_true",
                   help=f"exit 0 when nothing is written (default: exit {EXIT_EMPTY})")
    _add_split_args(p)
    _add_keep(p)
    _add_groups(p, "embed")
    p.add_argument("--no-ray", action="store_true", help="embed in this process instead of on Ray")
    p.set_defaults(func=commands["embed"])

    p = sub.add_parser("index", help="build a FAISS index from an embedding store")
    p.add_argument("store")
    p.add_argument("--out", required=True, help="new index directory")
    p.add_argument("--ray", action="store_true",
                   help="build on the Ray cluster (train once, add per store partition; RAY_ADDRESS or a local Ray)")
    _add_groups(p, "index")
    p.set_defaults(func=commands["index"])

    p = sub.add_parser("plan", help="predict time and memory of embedding, index build, serving and head fit",
                       description="genoray plan --n N --dim D (or --store STORE): predicted peak memory and time "
                                   "of each stage on the given cluster. Exit status: 0 fits, 4 does not fit.")
    p.add_argument("--n", type=int, default=0, help="vectors")
    p.add_argument("--dim", type=int, default=0, help="embedding dimension")
    p.add_argument("--store", help="plan for this embedding store instead of --n/--dim")
    p.add_argument("--memory-budget-mb", type=int, default=0,
                   help="memory for the codes, picks the auto type (default: half the memory of all nodes)")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--memory-per-node", type=float, default=0.0, help="GB per node (default: this machine's available memory)")
    p.add_argument("--cpus-per-node", type=int, default=0, help="default: this machine's cores")
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--encoder", default="kmer", help="kmer or hf (sets the embedding rate)")
    p.add_argument("--embed-rate", type=float, default=0.0, help="measured sequences/s per node (overrides the default)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    _add_groups(p, "plan")
    p.set_defaults(func=commands["plan"])

    p = sub.add_parser("train", help="fit the fused head (kNN vote + linear head by default; --head trees|auto opt-in)")
    p.add_argument("store")
    p.add_argument("--index", required=True, help="index built from the same store and split")
    p.add_argument("--out", required=True, help="new head directory")
    p.add_argument("--train-split", "--split", dest="split", default="train",
                   help="split to fit on, or 'all' (default: train)")
    _add_groups(p, "train")
    p.set_defaults(func=commands["train"])

    p = sub.add_parser(
        "evaluate", help="score a trained head on a held-out split, or run a study (STUDY.yaml)",
        description="genoray evaluate STORE --index I --head H: majority / kNN / linear / fused metrics on a split. "
                    "genoray evaluate STUDY.yaml --out DIR: methods x datasets x protocols (within, cross, pooled) "
                    "with bootstrap CIs and cost, written to DIR/report.md and DIR/report.json.")
    p.add_argument("target", help="an embedding store, or a study YAML file (see examples/study.yaml)")
    p.add_argument("--index")
    p.add_argument("--head")
    p.add_argument("--split", "--test-split", dest="split", default="test",
                   help="split to score, or 'all' (default: test)")
    p.add_argument("--train-split", default="train", help="split the index and head were built on (default: train)")
    p.add_argument("--bootstrap", type=int, default=200, help="resamples for the 95%% intervals (default: 200)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    p.add_argument("--json", action="store_true", help="print the report as JSON (strict: undefined values are null)")
    p.add_argument("--out", help="report directory (study mode)")
    p.set_defaults(func=commands["evaluate"])

    p = sub.add_parser("predict", help="predict labels with neighbours and OOD scores (JSON lines, TSV or Parquet)")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--index", required=True)
    p.add_argument("--head", required=True)
    p.add_argument("--out", help="write predictions here instead of stdout (required for parquet)")
    p.add_argument("--format", choices=("jsonl", "tsv", "parquet"), default="jsonl",
                   help="jsonl (default): one JSON object per query; tsv: one row per query, probabilities as "
                        "p_<class> columns, neighbours as id:label:similarity;...; parquet: the same columns, "
                        "neighbours as a list of structs")
    p.add_argument("--with-sequences", action="store_true",
                   help="give each neighbour its sequence and metadata, read again from the source files of the "
                        "store the index was built from (predictions are held in memory until then)")
    p.add_argument("--k", type=int, help="neighbours to return per prediction")
    p.add_argument("--target", nargs="+", help="unlabeled sample of the target data (any supported format; labels "
                   "ignored): estimate its class priors and re-weight probabilities when the shift is significant")
    p.add_argument("--allow-empty", action="store_true",
                   help=f"exit 0 when nothing is predicted (default: exit {EXIT_EMPTY})")
    p.set_defaults(func=commands["predict"])

    p = sub.add_parser("publish", help="write a verified bundle and make it CURRENT, or roll back to a version")
    p.add_argument("root", help="bundle root directory")
    p.add_argument("--index", help="index directory for a new version")
    p.add_argument("--head", help="head directory for a new version")
    p.add_argument("--version", help="publish this existing version instead (rollback)")
    p.add_argument("--target", nargs="+", help="unlabeled sample of the data this bundle will serve (any supported "
                   "format; labels ignored): re-weight to its class priors when the shift is significant")
    p.add_argument("--shard-groups", type=int, default=None, metavar="N",
                   help="split the index's shards into N groups: 'genoray serve' then runs one searcher deployment "
                        "per group and gathers their answers (default: one group, every replica holds the whole index)")
    p.add_argument("--group-memory-mb", type=float, default=None, metavar="MB",
                   help="instead of --shard-groups: the fewest groups whose searcher replica fits MB of memory")
    p.set_defaults(func=commands["publish"])

    p = sub.add_parser("bundles", help="list the versions of a bundle root and which one is CURRENT")
    p.add_argument("root", help="bundle root directory")
    p.add_argument("--verify", action="store_true", help="check every file of every version against its sha256")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=commands["bundles"])

    p = sub.add_parser(
        "reindex", help="nightly: embed new files, rebuild, gate and publish",
        description="Embed the input files into WORK/store (files done on earlier runs are skipped), build a new "
                    "index and head, and publish them to BUNDLES if the gate passes. Exit status: 0 published, "
                    "4 gate failed (the current bundle keeps serving; WORK/builds/<version>/gate.json says why).")
    p.add_argument("inputs", nargs="+", help="all labeled files (old and new)")
    p.add_argument("--work", required=True, help="working directory (long-lived store + builds)")
    p.add_argument("--bundles", required=True, help="bundle root the service watches")
    _add_encoder_args(p)
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
    p.add_argument("--reference-split", default="all")
    p.add_argument("--new-split", default="all")
    p.add_argument("--group-by", choices=("label", "domain", "none"), default="none",
                   help="break the OOD fraction down by this column of the new store")
    _add_groups(p, "shift")
    p.add_argument("--plot", help="write a PCA scatter PNG here (needs genoray[plot])")
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
    return parser
