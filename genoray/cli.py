"""``genoray`` command line. Each command calls the same function as the Python API:

quickstart -> genoray.quickstart.run_quickstart
embed      -> genoray.embed.embed_sequences
index      -> genoray.index.build_index
train      -> genoray.train.train_head
evaluate   -> genoray.train.evaluate_store
predict    -> genoray.predictor.Predictor
publish    -> genoray.bundle.write_bundle + publish
reindex    -> genoray.reindex.reindex
serve      -> genoray.serve.build_app
shift      -> genoray.shift.ShiftDetector
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path

from genoray.config import (EmbedConfig, HeadConfig, HFConfig, IndexConfig, KmerConfig, PositionConfig, ReadConfig,
                            ReindexConfig, ServeConfig, ShiftConfig)
from genoray.flags import Group, add_group, build

# Every config flag is generated from these dataclasses (genoray.flags): a default lives only in config.py.
READ = Group("read", ReadConfig, names={"batch_size": "read-batch-size"},
             title="reading and cleaning (ReadConfig, CleanPolicy)")
KMER = Group("kmer", KmerConfig, skip=("position",), title="k-mer encoder (--encoder kmer or kmer-pos; KmerConfig)")
POS = Group("pos", PositionConfig, prefix="pos-", title="position block (--encoder kmer-pos; PositionConfig)")
HF = Group("hf", HFConfig, prefix="hf-", skip=("model",), names={"trust_remote_code": "trust-remote-code"},
           title="transformers encoder (--encoder hf:<model>; HFConfig)")
EMBED = Group("embed", EmbedConfig, title="embedding job (EmbedConfig)")
INDEX = Group("index", IndexConfig, names={"index_type": ("type", "index-type"), "seed": "index-seed"},
              title="index (IndexConfig)")
HEAD = Group("head", HeadConfig, names={"seed": "head-seed"}, title="fused head (HeadConfig)")
REINDEX = Group("reindex", ReindexConfig,
                names={"index.index_type": ("type", "index-type"), "index.seed": "index-seed",
                       "head.seed": "head-seed"},
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
    "train": (HEAD,),
    "reindex": (READ, *ENCODER_GROUPS, REINDEX),
    "serve": (SERVE,),
    "shift": (SHIFT,),
}


def _add_encoder_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", default="kmer",
                   help="kmer (default: k-mer spectrum + GC + z-curve), kmer-pos (adds position-aware "
                        "features for fixed-window tasks), or hf:<hub id or local model dir>")


def _add_groups(p: argparse.ArgumentParser, command: str) -> None:
    for g in COMMAND_GROUPS[command]:
        add_group(p, g)


def _encoder(a: argparse.Namespace, name: str | None = None):
    """The encoder named by ``--encoder`` with the settings of its flag group."""
    from genoray.encoders import encoder_from_name

    name = name or a.encoder
    if name.startswith("hf:"):
        return encoder_from_name(name, hf=build(a, HF, model=name[3:]))
    return encoder_from_name(name, kmer=build(a, KMER), position=build(a, POS))


def _print(obj, as_json: bool, text: str | None = None) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, default=str))
    else:
        print(text if text is not None else json.dumps(obj, indent=2, default=str))


def cmd_quickstart(a: argparse.Namespace) -> int:
    from genoray.quickstart import ENCODERS, format_result, run_quickstart

    encoders = ENCODERS if a.encoder == "both" else (a.encoder,)
    result = run_quickstart(a.data, a.workdir, encoders, head_cfg=build(a, HEAD), read_cfg=build(a, READ),
                            use_ray=not a.no_ray, index_cfg=build(a, INDEX), embed_cfg=build(a, EMBED),
                            make_encoder=lambda name: _encoder(a, name))
    _print(result, a.json, format_result(result))
    return 0


def cmd_embed(a: argparse.Namespace) -> int:
    from genoray.embed import embed_sequences

    report = embed_sequences(a.inputs, a.out, _encoder(a), read_cfg=build(a, READ), embed_cfg=build(a, EMBED),
                             use_ray=not a.no_ray)
    _print(report.to_dict(), True)
    return 0 if report.status == "complete" else 3


def cmd_index(a: argparse.Namespace) -> int:
    from genoray.index import build_index

    _print(asdict(build_index(a.store, a.out, build(a, INDEX))), True)
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from genoray.train import train_head

    split = None if a.split == "all" else a.split
    _print(train_head(a.store, a.index, a.out, build(a, HEAD), split=split), True)
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    if a.target.endswith((".yaml", ".yml")):
        from genoray.evaluate import evaluate, load_study

        if not a.out:
            raise ValueError("a study needs --out DIR for report.md and report.json")
        report = evaluate(load_study(a.target), a.out)
        print(Path(a.out, "report.md").read_text())
        print(json.dumps(report["cost"]), file=sys.stderr)
        return 0
    from genoray.train import evaluate_store

    if not (a.index and a.head):
        raise ValueError("evaluating a store needs --index and --head")
    _print(evaluate_store(a.target, a.index, a.head, split=a.split), True)
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    from genoray.predictor import Predictor
    from genoray.sequences import ReadReport, iter_sequences

    predictor = Predictor.load(a.index, a.head)
    report = ReadReport()
    out = open(a.out, "w") if a.out else sys.stdout
    n = 0
    try:
        for batch in iter_sequences(a.inputs, report=report):
            ids, seqs = batch["seq_id"].to_pylist(), batch["sequence"].to_pylist()
            for p in predictor.predict(seqs, ids=ids, k=a.k):
                out.write(json.dumps(p.to_dict()) + "\n")
                n += 1
    finally:
        if a.out:
            out.close()
    summary = report.to_dict()
    summary["predicted"] = n
    print(json.dumps(summary), file=sys.stderr)
    return 0


def cmd_publish(a: argparse.Namespace) -> int:
    from genoray.bundle import current_version, publish, write_bundle

    if a.version:
        publish(a.root, a.version)
    elif a.index and a.head:
        publish(a.root, write_bundle(a.root, a.index, a.head))
    else:
        raise ValueError("give --index and --head (new version) or --version (rollback / re-publish)")
    _print({"current": current_version(a.root)}, True)
    return 0


def cmd_reindex(a: argparse.Namespace) -> int:
    from genoray.reindex import reindex

    rep = reindex(a.inputs, a.work, a.bundles, _encoder(a), read_cfg=build(a, READ), cfg=build(a, REINDEX),
                  use_ray=not a.no_ray)
    _print(asdict(rep), True)
    return 0 if rep.published else 4


def cmd_serve(a: argparse.Namespace) -> int:
    import signal
    import time

    import ray
    from ray import serve

    from genoray.embed import init_ray
    from genoray.serve import build_app, haproxy_env, start_http

    cfg = build(a, SERVE, root=a.root)
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {cfg.host}; put a TLS-terminating proxy in front", file=sys.stderr)
    if cfg.ingress == "haproxy":
        if os.environ.get("RAY_ADDRESS"):
            print("note: --ingress haproxy needs the cluster's Ray processes started with genoray.serve.haproxy_env() "
                  "(see cluster.yaml)", file=sys.stderr)
        for k, v in haproxy_env().items():  # read by Ray's processes at start; explicit settings win
            os.environ.setdefault(k, v)
    init_ray()
    start_http(cfg)
    serve.run(build_app(cfg), name="genoray", route_prefix="/")
    print(f"genoray serving {a.root} on http://{cfg.host}:{cfg.port}/v1/predict (Ctrl-C to stop)", file=sys.stderr)

    def stop(signum, frame):  # SIGTERM (systemd, Kubernetes, timeout) stops cleanly like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
        ray.shutdown()
    return 0


def cmd_shift(a: argparse.Namespace) -> int:
    from genoray.shift import ShiftDetector, plot_shift
    from genoray.store import EmbeddingStore

    ref_store, new_store = EmbeddingStore(a.reference), EmbeddingStore(a.new)
    if ref_store.fingerprint != new_store.fingerprint:
        raise ValueError(f"stores use different encoders ({ref_store.fingerprint} vs {new_store.fingerprint}): "
                         "embed both with the same encoder")
    ref = ref_store.load(None if a.reference_split == "all" else a.reference_split)
    new = new_store.load(None if a.new_split == "all" else a.new_split)
    det = ShiftDetector(build(a, SHIFT)).fit(ref.vectors)
    groups = {"label": new.labels, "domain": new.domains}.get(a.group_by)
    report = det.score(new.vectors, groups).to_dict()
    if a.plot:
        plot_shift(det, new.vectors, a.plot)
        report["plot"] = a.plot
    _print(report, True)
    return 5 if report["is_shift"] else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genoray", description="Retrieval-augmented genomic prediction.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("quickstart", help="embed, index, train and evaluate one labeled file end to end")
    p.add_argument("--data", help="labeled Parquet/CSV/FASTA with train/test splits (default: bundled E. coli promoters)")
    p.add_argument("--workdir", help="where stores, indexes and heads are written (default: a new temp dir)")
    p.add_argument("--encoder", default="kmer", help="kmer, kmer-pos, both (kmer and kmer-pos side by side) or hf:<model>")
    p.add_argument("--no-ray", action="store_true", help="embed in this process instead of on local Ray")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_groups(p, "quickstart")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser(
        "embed", help="embed sequence files into an embedding store (resumable)",
        description="Embed sequence files on a Ray actor pool. Rerunning into the same --out skips finished "
                    "units, so an interrupted job resumes. Exit status: 0 complete, 3 partial (some files "
                    "could not be read; they are listed), 2 error.")
    p.add_argument("inputs", nargs="+", help="FASTA/FASTQ(.gz), Parquet or CSV/TSV files, directories or globs")
    p.add_argument("--out", required=True, help="store directory (new, or one to resume)")
    _add_encoder_args(p)
    _add_groups(p, "embed")
    p.add_argument("--no-ray", action="store_true", help="embed in this process instead of on Ray")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("index", help="build a FAISS index from an embedding store")
    p.add_argument("store")
    p.add_argument("--out", required=True, help="new index directory")
    _add_groups(p, "index")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("train", help="fit the fused kNN + linear head")
    p.add_argument("store")
    p.add_argument("--index", required=True, help="index built from the same store and split")
    p.add_argument("--out", required=True, help="new head directory")
    p.add_argument("--split", default="train")
    _add_groups(p, "train")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate", help="score a trained head on a held-out split, or run a study (STUDY.yaml)",
        description="genoray evaluate STORE --index I --head H: majority / kNN / linear / fused metrics on a split. "
                    "genoray evaluate STUDY.yaml --out DIR: methods x datasets x protocols (within, cross, pooled) "
                    "with bootstrap CIs and cost, written to DIR/report.md and DIR/report.json.")
    p.add_argument("target", help="an embedding store, or a study YAML file (see examples/study.yaml)")
    p.add_argument("--index")
    p.add_argument("--head")
    p.add_argument("--split", default="test")
    p.add_argument("--out", help="report directory (study mode)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="predict labels with neighbours and OOD scores (JSON lines)")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--index", required=True)
    p.add_argument("--head", required=True)
    p.add_argument("--out", help="write JSON lines here instead of stdout")
    p.add_argument("--k", type=int, help="neighbours to return per prediction")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("publish", help="write a verified bundle and make it CURRENT, or roll back to a version")
    p.add_argument("root", help="bundle root directory")
    p.add_argument("--index", help="index directory for a new version")
    p.add_argument("--head", help="head directory for a new version")
    p.add_argument("--version", help="publish this existing version instead (rollback)")
    p.set_defaults(func=cmd_publish)

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
    _add_groups(p, "reindex")
    p.set_defaults(func=cmd_reindex)

    p = sub.add_parser("serve", help="serve the CURRENT bundle over HTTP with Ray Serve",
                       description="Replicas load ROOT/CURRENT and follow it: publishing a new version (genoray "
                                   "publish / reindex) swaps every replica without downtime. API keys come from "
                                   "GENORAY_API_KEYS (comma-separated).")
    p.add_argument("root", help="bundle root directory")
    _add_groups(p, "serve")
    p.set_defaults(func=cmd_serve)

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
    p.set_defaults(func=cmd_shift)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not args.verbose:
        os.environ.setdefault("GENORAY_QUIET_RAY", "1")
    from genoray.sequences import SequenceFormatError

    try:
        return args.func(args)
    except (SequenceFormatError, FileNotFoundError, FileExistsError, ValueError, RuntimeError) as e:
        print(f"genoray {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
