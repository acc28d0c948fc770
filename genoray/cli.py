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


def _add_encoder_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", default="kmer",
                   help="kmer (default: k-mer spectrum + GC + z-curve), kmer-pos (adds position-aware "
                        "features for fixed-window tasks), or hf:<hub id or local model dir>")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the named transformers model to run its own code (local dir or explicit org/name only)")


def _print(obj, as_json: bool, text: str | None = None) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, default=str))
    else:
        print(text if text is not None else json.dumps(obj, indent=2, default=str))


def cmd_quickstart(a: argparse.Namespace) -> int:
    from genoray.quickstart import ENCODERS, format_result, run_quickstart

    encoders = ENCODERS if a.encoder == "both" else (a.encoder,)
    result = run_quickstart(a.data, a.workdir, encoders, use_ray=not a.no_ray)
    _print(result, a.json, format_result(result))
    return 0


def cmd_embed(a: argparse.Namespace) -> int:
    from genoray.config import CleanPolicy, EmbedConfig, ReadConfig
    from genoray.embed import embed_sequences
    from genoray.encoders import encoder_from_name

    cfg = EmbedConfig(batch_size=a.batch_size, num_actors=a.num_actors, on_error=a.on_error)
    read_cfg = ReadConfig(clean=CleanPolicy(max_length=a.max_length, long_records=a.long_records,
                                            window_overlap=a.window_overlap))
    report = embed_sequences(a.inputs, a.out, encoder_from_name(a.encoder, a.trust_remote_code),
                             read_cfg=read_cfg, embed_cfg=cfg, use_ray=not a.no_ray)
    _print(report.to_dict(), True)
    return 0 if report.status == "complete" else 3


def cmd_index(a: argparse.Namespace) -> int:
    from genoray.config import IndexConfig
    from genoray.index import build_index

    split = None if a.split == "all" else a.split
    cfg = IndexConfig(split=split, index_type=a.type, shards=a.shards, memory_budget_mb=a.memory_budget_mb,
                      target_recall=a.target_recall)
    _print(asdict(build_index(a.store, a.out, cfg)), True)
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from genoray.config import HeadConfig
    from genoray.train import train_head

    split = None if a.split == "all" else a.split
    _print(train_head(a.store, a.index, a.out, HeadConfig(k=a.k, C=a.C, head=a.head), split=split), True)
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
    from genoray.encoders import encoder_from_name
    from genoray.reindex import ReindexConfig, reindex

    cfg = ReindexConfig(recall_floor=a.recall_floor, max_accuracy_drop=a.max_accuracy_drop)
    rep = reindex(a.inputs, a.work, a.bundles, encoder_from_name(a.encoder, a.trust_remote_code), cfg=cfg,
                  use_ray=not a.no_ray)
    _print(asdict(rep), True)
    return 0 if rep.published else 4


def cmd_serve(a: argparse.Namespace) -> int:
    import signal
    import time

    import ray
    from ray import serve

    from genoray.embed import init_ray
    from genoray.serve import ServeConfig, build_app, haproxy_env, start_http

    cfg = ServeConfig(root=a.root, host=a.host, port=a.port, require_key=not a.no_auth,
                      min_replicas=a.min_replicas, max_replicas=a.max_replicas,
                      ingress_replicas=a.ingress_replicas, poll_s=a.poll_s, access_log=not a.no_access_log,
                      ingress=a.ingress, limits={"rate_per_key": a.rate_per_key} if a.rate_per_key else {})
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
    from genoray.shift import ShiftConfig, ShiftDetector, plot_shift
    from genoray.store import EmbeddingStore

    ref_store, new_store = EmbeddingStore(a.reference), EmbeddingStore(a.new)
    if ref_store.fingerprint != new_store.fingerprint:
        raise ValueError(f"stores use different encoders ({ref_store.fingerprint} vs {new_store.fingerprint}): "
                         "embed both with the same encoder")
    ref = ref_store.load(None if a.reference_split == "all" else a.reference_split)
    new = new_store.load(None if a.new_split == "all" else a.new_split)
    det = ShiftDetector(ShiftConfig(max_samples=a.max_samples, seed=a.seed)).fit(ref.vectors)
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
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser(
        "embed", help="embed sequence files into an embedding store (resumable)",
        description="Embed sequence files on a Ray actor pool. Rerunning into the same --out skips finished "
                    "units, so an interrupted job resumes. Exit status: 0 complete, 3 partial (some files "
                    "could not be read; they are listed), 2 error.")
    p.add_argument("inputs", nargs="+", help="FASTA/FASTQ(.gz), Parquet or CSV/TSV files, directories or globs")
    p.add_argument("--out", required=True, help="store directory (new, or one to resume)")
    _add_encoder_args(p)
    p.add_argument("--batch-size", type=int, default=1024, help="records per encoder call")
    p.add_argument("--num-actors", type=int, default=0, help="encoder actors (default: one per CPU, or per GPU)")
    p.add_argument("--on-error", choices=("continue", "fail"), default="continue",
                   help="a bad file: record it and go on (default, exit 3) or stop the job")
    p.add_argument("--max-length", type=int, default=1_000_000, help="longest record kept whole (bp)")
    p.add_argument("--long-records", choices=("reject", "window"), default="reject",
                   help="longer records: reject (too_long) or cut into --max-length windows with ids <id>:<start>-<end>")
    p.add_argument("--window-overlap", type=int, default=0, help="bases shared by consecutive windows")
    p.add_argument("--no-ray", action="store_true", help="embed in this process instead of on Ray")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("index", help="build a FAISS index from an embedding store")
    p.add_argument("store")
    p.add_argument("--out", required=True, help="new index directory")
    p.add_argument("--split", default="train", help="split to index, or 'all' (default: train)")
    p.add_argument("--type", default="auto",
                   help="auto (Flat below 100k vectors, IVF-SQ8 within the memory budget, else IVF-PQ) or a "
                        "FAISS factory string such as IVF1024,Flat or HNSW32")
    p.add_argument("--shards", type=int, default=0, help="number of shards (default: one per 2M vectors)")
    p.add_argument("--memory-budget-mb", type=int, default=4096, help="memory for the stored vectors/codes (picks the auto type)")
    p.add_argument("--target-recall", type=float, default=0.95, help="recall@10 that nprobe/efSearch are tuned to")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("train", help="fit the fused head (kNN vote + linear and/or tree head)")
    p.add_argument("store")
    p.add_argument("--index", required=True, help="index built from the same store and split")
    p.add_argument("--out", required=True, help="new head directory")
    p.add_argument("--split", default="train")
    p.add_argument("--k", type=int, default=10, help="neighbours in the vote")
    p.add_argument("--C", type=float, default=None,
                   help="inverse regularisation of the logistic regression (default: chosen on a validation split)")
    p.add_argument("--head", choices=("linear", "trees", "auto"), default="auto",
                   help="parts the head may mix with the kNN vote: linear, gradient-boosted trees, or both (auto; "
                        "chosen by validation log-loss)")
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
    p.add_argument("--recall-floor", type=float, default=0.9)
    p.add_argument("--max-accuracy-drop", type=float, default=0.02)
    p.add_argument("--no-ray", action="store_true")
    p.set_defaults(func=cmd_reindex)

    p = sub.add_parser("serve", help="serve the CURRENT bundle over HTTP with Ray Serve",
                       description="Replicas load ROOT/CURRENT and follow it: publishing a new version (genoray "
                                   "publish / reindex) swaps every replica without downtime. API keys come from "
                                   "GENORAY_API_KEYS (comma-separated).")
    p.add_argument("root", help="bundle root directory")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--min-replicas", type=int, default=1,
                   help="model replicas kept running (use >= 2 so a dying replica's requests are retried on another)")
    p.add_argument("--max-replicas", type=int, default=2, help="autoscaling ceiling for model replicas")
    p.add_argument("--ingress", choices=["proxy", "haproxy"], default="proxy",
                   help="proxy: Serve's Python proxy -> API replicas -> model replicas, loopback only. haproxy: "
                        "Ray's high-throughput mode, HAProxy -> replicas that serve the API and the model in one "
                        "process, no Ray hop per request (2 cores: 943 vs 173 single-sequence req/s at 32 "
                        "clients). HAProxy's stats and metrics ports (RAY_SERVE_HAPROXY_STATS_PORT, _METRICS_PORT; "
                        "default 8404, 9101) bind all interfaces")
    p.add_argument("--ingress-replicas", type=int, default=1,
                   help="HTTP ingress replicas (auth and validation; --ingress proxy only)")
    p.add_argument("--no-access-log", action="store_true",
                   help="no per-request access log lines (one log write less per hop and request)")
    p.add_argument("--poll-s", type=float, default=2.0, help="how often replicas check CURRENT")
    p.add_argument("--no-auth", action="store_true", help="accept requests without an API key (local use only)")
    p.add_argument("--rate-per-key", type=float, default=0.0,
                   help="requests/s per API key and ingress replica (token bucket, burst 20; 429 beyond); 0 = off")
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
    p.add_argument("--max-samples", type=int, default=1000, help="rows per side (seeded subsample)")
    p.add_argument("--seed", type=int, default=0)
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
