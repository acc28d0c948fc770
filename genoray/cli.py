"""``genoray`` command line. Each command calls the same function as the Python API:

quickstart -> genoray.quickstart.run_quickstart
embed      -> genoray.embed.embed_sequences
index      -> genoray.index.build_index
train      -> genoray.train.train_head
evaluate   -> genoray.quickstart.evaluation_report (genoray.train.evaluate_store; a study: genoray.evaluate.evaluate)
predict    -> genoray.predictor.Predictor
publish    -> genoray.bundle.write_bundle + publish
bundles    -> genoray.bundle.list_versions
reindex    -> genoray.reindex.reindex
serve      -> genoray.serve.build_app
shift      -> genoray.shift.ShiftDetector

Config flags are generated from the dataclasses in genoray.config (genoray.flags); exit codes
are ``EXIT_CODES`` (also in ``genoray --help`` and the README).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path

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
from genoray.flags import Group, add_group, build
from genoray.metrics import strict_json

log = logging.getLogger(__name__)

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
    "train": (HEAD,),
    "reindex": (READ, *ENCODER_GROUPS, REINDEX),
    "serve": (SERVE,),
    "shift": (SHIFT,),
}


def _add_encoder_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", default=None,
                   help="kmer (default: k-mer spectrum + GC + z-curve), kmer-pos (adds position-aware "
                        "features for fixed-window tasks), or hf:<hub id or local model dir>")
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
    if name.startswith("hf:"):
        return encoder_from_name(name, hf=build(a, HF, model=name[3:]))
    return encoder_from_name(name, kmer=build(a, KMER), position=build(a, POS))


# Exit status of every command (also in README "Exit codes" and `genoray --help`).
EXIT_OK = 0
EXIT_USAGE = 2  # bad flags or settings, unreadable or malformed input that stops the job, missing files
EXIT_PARTIAL = 3  # some input files failed (listed); the rest was written
EXIT_GATE = 4  # reindex: the gate failed, nothing published (the current bundle keeps serving)
EXIT_SHIFT = 5  # shift: the new data is distributed differently
EXIT_EMPTY = 6  # nothing was written (no input records, every record rejected, every file failed)
EXIT_BUG = 70  # a broken internal invariant or an unexpected exception: a bug in genoray, please report it
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGINT
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_USAGE: "usage or input error: bad flag or setting, missing/malformed input file (one line on stderr)",
    EXIT_PARTIAL: "partial: some input files failed and are listed; the rest was written",
    EXIT_GATE: "reindex: gate failed, nothing published",
    EXIT_SHIFT: "shift: distribution shift detected",
    EXIT_EMPTY: "nothing written: no record survived reading/cleaning or every file failed (--allow-empty: 0)",
    EXIT_BUG: "internal error (a bug or broken invariant in genoray; -v shows the traceback)",
    EXIT_INTERRUPTED: "interrupted",
}


class NothingWritten(Exception):
    """A job finished without writing anything (exit 6 unless ``--allow-empty``)."""


NAN_REASON = ("undefined for this data, written as null (AUROC needs both classes in the test split; "
              "MCC and F1 need predictions and labels of more than one class)")


def dumps(obj, indent: int | None = None) -> str:
    """Strict JSON (``NaN``/``inf`` become ``null``)."""
    clean, _ = strict_json(obj)
    return json.dumps(clean, indent=indent, default=str, allow_nan=False)


def _print(obj, as_json: bool, text: str | None = None) -> None:
    clean, replaced = strict_json(obj)
    if as_json or text is None:
        print(json.dumps(clean, indent=2, default=str, allow_nan=False))
    else:
        print(text)
    if replaced:
        print(f"note: {', '.join(replaced)}: {NAN_REASON}", file=sys.stderr)


def cmd_quickstart(a: argparse.Namespace) -> int:
    import shutil
    import tempfile

    from genoray.quickstart import ENCODERS

    encoders = ENCODERS if a.encoder == "both" else (a.encoder,)
    index_cfg = build(a, INDEX)
    workdir = a.workdir or tempfile.mkdtemp(prefix="genoray-quickstart-")
    try:
        return _quickstart(a, encoders, index_cfg, workdir)
    finally:
        if not a.workdir and not a.keep:
            shutil.rmtree(workdir, ignore_errors=True)
            print(f"genoray quickstart: removed the work dir {workdir} (keep it with --keep or --workdir DIR)",
                  file=sys.stderr)


def _quickstart(a: argparse.Namespace, encoders, index_cfg: IndexConfig, workdir: str) -> int:
    from genoray.quickstart import format_result, run_quickstart

    result = run_quickstart(a.data, workdir, encoders, head_cfg=build(a, HEAD),
                            read_cfg=_read_cfg(a, index_cfg.split, a.test_split), test_split=_split(a.test_split),
                            use_ray=not a.no_ray, index_cfg=index_cfg, embed_cfg=build(a, EMBED),
                            make_encoder=lambda name: _encoder(a, name))
    _print(result, a.json, format_result(result))
    return 0


def cmd_embed(a: argparse.Namespace) -> int:
    from genoray.embed import embed_sequences

    report = embed_sequences(a.inputs, a.out, _encoder(a), read_cfg=_read_cfg(a, a.train_split, a.test_split),
                             embed_cfg=build(a, EMBED), fit_split=_split(a.train_split), use_ray=not a.no_ray)
    out = report.to_dict()
    manifest = json.loads(Path(a.out, "store.json").read_text())
    rejects = [str(Path(a.out, p["rejects"])) for p in manifest["parts"] if p.get("rejects")]
    out["rejects_tables"] = rejects  # Parquet: source file, record number, seq_id, reason
    # complete: every file read, rows written; partial: some files failed, rows written (exit 3);
    # failed: files failed and nothing was written; empty: nothing to write (both exit 6)
    out["outcome"] = ("failed" if report.failed else "empty") if report.written == 0 else \
        ("partial" if report.failed else "complete")
    _print(out, True)
    if report.failed:
        print(f"genoray embed: {len(report.failed)} of {report.units} input units failed (listed under \"failed\")",
              file=sys.stderr)
    if out["rejected"]:
        print(f"genoray embed: {out['rejected']} records rejected {out['rejected_by_reason']}; "
              f"rejects tables: {', '.join(rejects) or '(none kept)'}", file=sys.stderr)
    if report.written == 0:
        _nothing_written(a, _why_empty(report.read, out["rejected_by_reason"], report.failed, report.units))
        return EXIT_PARTIAL if report.failed else EXIT_OK
    return EXIT_OK if report.status == "complete" else EXIT_PARTIAL


def _why_empty(read: int, rejected: dict[str, int], failed: list[dict], units: int) -> str:
    if failed and len(failed) == units:
        return f"every input file failed; first: {failed[0]['error']}"
    if read == 0:
        return "the input holds no records" + (f" ({len(failed)} of {units} units failed)" if failed else "")
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(rejected.items(), key=lambda kv: -kv[1]))
    hint = " (protein or other non-DNA input?)" if max(rejected, key=rejected.get, default="") == "invalid_character" else ""
    return f"all {read} records were rejected: {reasons}{hint}"


def _nothing_written(a: argparse.Namespace, why: str) -> None:
    if not getattr(a, "allow_empty", False):
        raise NothingWritten(why)
    print(f"genoray {a.command}: warning: nothing written: {why}", file=sys.stderr)


def cmd_index(a: argparse.Namespace) -> int:
    from genoray.index import build_index

    _print(asdict(build_index(a.store, a.out, build(a, INDEX))), True)
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from genoray.train import train_head

    _print(train_head(a.store, a.index, a.out, build(a, HEAD), split=_split(a.split)), True)
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
    from genoray.quickstart import evaluation_report, format_evaluation

    if not (a.index and a.head):
        raise ValueError("evaluating a store needs --index and --head")
    rep = evaluation_report(a.target, a.index, a.head, split=_split(a.split), train_split=_split(a.train_split),
                            bootstrap=a.bootstrap, seed=a.seed)
    _print(rep, a.json, format_evaluation(rep))
    return EXIT_OK


def _split(name: str | None) -> str | None:
    """A split name from the command line: ``all`` (or ``none``) means every row."""
    return None if name is None or name.lower() in ("all", "none") else name


def cmd_predict(a: argparse.Namespace) -> int:
    from genoray.predictor import Predictor
    from genoray.sequences import ReadReport, iter_sequences

    if a.format == "parquet" and not a.out:
        raise ValueError("--format parquet needs --out FILE")
    predictor = Predictor.load(a.index, a.head)
    adaptation = None
    if a.target:  # unlabeled target sample: estimate its class priors, decide whether to re-weight
        from genoray.sequences import read_sequences

        target, _ = read_sequences(a.target)
        adaptation = predictor.adapt_to(target["sequence"].to_pylist()).to_dict()
    report = ReadReport()
    rows: list[dict] = []
    writer = _PredictionWriter(a.out, a.format, [str(c) for c in predictor.head.classes_], a.with_sequences)
    try:
        for batch in iter_sequences(a.inputs, report=report):
            ids, seqs = batch["seq_id"].to_pylist(), batch["sequence"].to_pylist()
            preds = [p.to_dict() for p in predictor.predict(seqs, ids=ids, k=a.k)]
            if a.with_sequences:  # joined after the last batch: the source files are read once
                rows += preds
            else:
                writer.write(preds)
        if a.with_sequences:
            missing = _join_neighbour_records(predictor.index.manifest, rows)
            writer.write(rows)
    finally:
        writer.close()
    summary = report.to_dict()
    summary["predicted"] = writer.n
    if a.with_sequences:
        summary["neighbours_without_sequence"] = missing
    if adaptation is not None:
        summary["target_adaptation"] = adaptation
    print(dumps(summary), file=sys.stderr)
    if writer.n == 0:
        _nothing_written(a, _why_empty(report.read, summary["rejected_by_reason"], [], 1))
    return EXIT_OK


class _PredictionWriter:
    """Predictions as JSON lines, TSV (one row per query; neighbours as ``id:label:similarity``
    joined by ``;``) or Parquet (probabilities one column per class, neighbours a list of structs)."""

    def __init__(self, path: str | None, fmt: str, classes: list[str], with_sequences: bool = False):
        self.path, self.fmt, self.classes, self.n, self.seqs = path, fmt, classes, 0, with_sequences
        self.tables: list = []
        self.f = None
        if fmt != "parquet":
            self.f = open(path, "w") if path else sys.stdout  # noqa: SIM115 (closed in close())
            if fmt == "tsv":
                extra = ["neighbour_sequences"] if with_sequences else []
                self.f.write("\t".join(["seq_id", "label", "ood_score", *(f"p_{c}" for c in classes), "neighbours",
                                        *extra]) + "\n")

    def write(self, preds: list[dict]) -> None:
        self.n += len(preds)
        if self.fmt == "jsonl":
            for p in preds:
                self.f.write(dumps(p) + "\n")
        elif self.fmt == "tsv":
            for p in preds:
                nb = ";".join(f"{x['seq_id']}:{x['label']}:{x['similarity']}" for x in p["neighbours"])
                extra = [";".join(str(x.get("sequence")) for x in p["neighbours"])] if self.seqs else []
                self.f.write("\t".join([str(p["seq_id"]), p["label"], str(p["ood_score"]),
                                        *(str(p["probabilities"][c]) for c in self.classes), nb, *extra]) + "\n")
        elif preds:
            import pyarrow as pa

            cols = {"seq_id": [p["seq_id"] for p in preds], "label": [p["label"] for p in preds],
                    "ood_score": [p["ood_score"] for p in preds]}
            for c in self.classes:
                cols[f"p_{c}"] = [p["probabilities"][c] for p in preds]
            cols["neighbours"] = [p["neighbours"] for p in preds]
            self.tables.append(pa.Table.from_pydict(cols))

    def close(self) -> None:
        if self.fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            if self.tables:
                pq.write_table(pa.concat_tables(self.tables, promote_options="default"), self.path)
        elif self.path and self.f is not None:
            self.f.close()


def _join_neighbour_records(index_manifest: dict, rows: list[dict]) -> int:
    """Add each neighbour's ``sequence`` and ``meta`` (read again from the source files of the
    store the index was built from, default reading settings); returns how many were not found."""
    from genoray.sequences import iter_sequences
    from genoray.store import EmbeddingStore

    store = EmbeddingStore(index_manifest["source_store"], verify=False)
    wanted = {nb["seq_id"] for r in rows for nb in r["neighbours"]}
    found: dict[str, tuple[str, dict | None]] = {}
    sources = sorted({p["source"] for p in store.manifest["parts"]})
    for batch in iter_sequences(sources):
        for sid, seq, meta in zip(batch["seq_id"].to_pylist(), batch["sequence"].to_pylist(),
                                  batch["meta"].to_pylist()):
            if sid in wanted:
                found[sid] = (seq, json.loads(meta) if meta else None)
    missing = 0
    for r in rows:
        for nb in r["neighbours"]:
            seq, meta = found.get(nb["seq_id"], (None, None))
            nb["sequence"], nb["meta"] = seq, meta
            missing += seq is None
    return missing


def cmd_publish(a: argparse.Namespace) -> int:
    from genoray.bundle import current_version, publish, write_bundle

    if a.version:
        publish(a.root, a.version)
    elif a.index and a.head:
        target = None
        if a.target:  # a bundle built for a target: its class priors travel in head/priors.json
            from genoray.sequences import read_sequences

            target = read_sequences(a.target)[0]["sequence"].to_pylist()
        publish(a.root, write_bundle(a.root, a.index, a.head, target=target))
    else:
        raise ValueError("give --index and --head (new version) or --version (rollback / re-publish)")
    _print({"current": current_version(a.root)}, True)
    return 0


def cmd_bundles(a: argparse.Namespace) -> int:
    from genoray.bundle import list_versions

    rows = list_versions(a.root, verify=a.verify)
    lines = [f"{'':2}{'version':<28} {'created':<21} {'fingerprint':<17} {'vectors':>8} {'recall@10':>9}  classes"]
    for r in rows:
        rec = r.get("recall_at_10")
        lines.append(f"{'*' if r['current'] else ' ':2}{r['version']:<28} {r.get('created_at') or '?':<21} "
                     f"{r.get('fingerprint') or '?':<17} {r.get('ntotal') or '?':>8} "
                     f"{'?' if rec is None else f'{rec:.3f}':>9}  {','.join(r.get('classes') or [])}"
                     + (f"  leased by {','.join(r['leases'])}" if r["leases"] else "")
                     + (f"  {r['verified']}" if "verified" in r else "") + (f"  ERROR {r['error']}" if "error" in r else ""))
    lines.append("* = CURRENT" if any(r["current"] for r in rows) else "no version is CURRENT (nothing published)")
    _print(rows, a.json, "\n".join(lines))
    bad = [r for r in rows if "error" in r or r.get("verified", "ok") != "ok"]
    return EXIT_USAGE if bad else EXIT_OK


def cmd_reindex(a: argparse.Namespace) -> int:
    from genoray.reindex import reindex

    cfg = build(a, REINDEX)
    rep = reindex(a.inputs, a.work, a.bundles, _encoder(a), read_cfg=_read_cfg(a, cfg.index.split, cfg.eval_split),
                  cfg=cfg,
                  use_ray=not a.no_ray)
    _print(asdict(rep), True)
    return 0 if rep.published else 4


def cmd_serve(a: argparse.Namespace) -> int:
    import signal
    import time

    from genoray.service import keys_from_env

    cfg = build(a, SERVE, root=a.root)
    if cfg.require_key and not (cfg.key_hashes or keys_from_env()):  # before Ray starts: seconds, not minutes
        raise ValueError("no API keys configured: set GENORAY_API_KEYS=key1,key2 (comma-separated), "
                         "or pass --no-auth to accept requests without a key (local use only)")
    from genoray.bundle import current_version

    if current_version(a.root) is None:
        raise FileNotFoundError(f"{a.root}: no CURRENT bundle has been published (genoray publish {a.root} "
                                "--index INDEX --head HEAD)")
    from ray import serve

    from genoray.runtime import init_ray
    from genoray.serve import build_app, haproxy_env, start_http

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
        serve.shutdown()  # Ray itself is stopped (and its temp dir removed) by main()
    return 0


def cmd_shift(a: argparse.Namespace) -> int:
    from genoray.shift import ShiftDetector, plot_shift
    from genoray.store import EmbeddingStore

    if a.plot:  # check before the (long) test, not after it
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise ValueError("--plot needs matplotlib: pip install 'genoray[plot]' (or drop --plot)")
    ref_store, new_store = EmbeddingStore(a.reference), EmbeddingStore(a.new)
    if ref_store.fingerprint != new_store.fingerprint:
        raise ValueError(f"stores use different encoders ({ref_store.fingerprint} vs {new_store.fingerprint}): "
                         f"embed both with the same encoder (e.g. genoray embed NEW_FILES --encoder-from {a.reference} "
                         "--out NEW_STORE)")
    ref = ref_store.load(None if a.reference_split == "all" else a.reference_split)
    new = new_store.load(None if a.new_split == "all" else a.new_split)
    # the per-row OOD share uses the predictor's score: class-conditional when the reference is
    # labeled, length-matched when both stores' source sequences can be re-read
    from genoray.encoders import encoder_from_spec
    from genoray.ood import store_sequences

    labels = ref.labels if all(v is not None for v in ref.labels) else None
    ref_seqs, new_seqs = store_sequences(ref_store, ref.ids), store_sequences(new_store, new.ids)
    enc = encoder_from_spec(ref_store.encoder_spec) if ref_seqs is not None and new_seqs is not None else None
    det = ShiftDetector(build(a, SHIFT)).fit(
        ref.vectors, labels, ref_seqs if enc else None, enc)
    groups = {"label": new.labels, "domain": new.domains}.get(a.group_by)
    report = det.score(new.vectors, groups, new_seqs if enc else None, enc).to_dict()
    if a.plot:
        plot_shift(det, new.vectors, a.plot)
        report["plot"] = a.plot
    _print(report, True)
    return 5 if report["is_shift"] else 0


def build_parser() -> argparse.ArgumentParser:
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
    p.set_defaults(func=cmd_quickstart)

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
    p.add_argument("--train-split", "--split", dest="split", default="train",
                   help="split to fit on, or 'all' (default: train)")
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
    p.add_argument("--split", "--test-split", dest="split", default="test",
                   help="split to score, or 'all' (default: test)")
    p.add_argument("--train-split", default="train", help="split the index and head were built on (default: train)")
    p.add_argument("--bootstrap", type=int, default=200, help="resamples for the 95%% intervals (default: 200)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    p.add_argument("--json", action="store_true", help="print the report as JSON (strict: undefined values are null)")
    p.add_argument("--out", help="report directory (study mode)")
    p.set_defaults(func=cmd_evaluate)

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
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("publish", help="write a verified bundle and make it CURRENT, or roll back to a version")
    p.add_argument("root", help="bundle root directory")
    p.add_argument("--index", help="index directory for a new version")
    p.add_argument("--head", help="head directory for a new version")
    p.add_argument("--version", help="publish this existing version instead (rollback)")
    p.add_argument("--target", nargs="+", help="unlabeled sample of the data this bundle will serve (any supported "
                   "format; labels ignored): re-weight to its class priors when the shift is significant")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("bundles", help="list the versions of a bundle root and which one is CURRENT")
    p.add_argument("root", help="bundle root directory")
    p.add_argument("--verify", action="store_true", help="check every file of every version against its sha256")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=cmd_bundles)

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
    p.set_defaults(func=cmd_reindex)

    p = sub.add_parser("serve", help="serve the CURRENT bundle over HTTP with Ray Serve",
                       description="Replicas load ROOT/CURRENT and follow it: publishing a new version (genoray "
                                   "publish / reindex) swaps every replica without downtime. API keys come from "
                                   "GENORAY_API_KEYS (comma-separated).")
    p.add_argument("root", help="bundle root directory")
    _add_keep(p)
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
    """Run one command; returns its exit status (see ``EXIT_CODES``)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.verbose:
        return _run(args)
    from genoray.quiet import NativeStderrFilter, quiet_python_loggers

    quiet_python_loggers()
    with NativeStderrFilter():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from genoray.errors import InvariantError
    from genoray.sequences import SequenceFormatError

    ray_before = _ray_running()
    try:
        return args.func(args)
    except NothingWritten as e:
        print(f"genoray {args.command}: nothing written: {e} (exit {EXIT_EMPTY}; --allow-empty accepts this)",
              file=sys.stderr)
        return EXIT_EMPTY
    except KeyboardInterrupt:
        print(f"genoray {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (InvariantError, AssertionError) as e:
        return _bug(args, e)
    except (SequenceFormatError, OSError, ValueError, RuntimeError, ImportError) as e:  # input, settings, system
        print(f"genoray {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 (anything else is not the user's fault: report it as a bug)
        return _bug(args, e)
    finally:
        if not ray_before:
            _stop_ray(keep=getattr(args, "keep", False))


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def _stop_ray(keep: bool) -> None:
    """Shut down the Ray this command started and remove its temp dir (``gr-ray-*``) unless ``keep``."""
    import shutil

    if not _ray_running():
        return
    import ray

    temp = None
    try:
        temp = ray._private.worker._global_node.get_temp_dir_path()  # private, hence the guard
    except Exception:
        log.debug("no Ray temp dir found", exc_info=True)
    ray.shutdown()
    if temp and Path(temp).name.startswith("gr-ray-"):
        if keep:
            print(f"genoray: kept Ray's temp dir {temp}", file=sys.stderr)
        else:
            shutil.rmtree(temp, ignore_errors=True)


def _bug(args: argparse.Namespace, e: BaseException) -> int:
    import traceback

    if args.verbose:
        traceback.print_exc()
    print(f"genoray {args.command}: internal error (a bug in genoray, please report it): {type(e).__name__}: {e}"
          + ("" if args.verbose else " (-v shows the traceback)"), file=sys.stderr)
    return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
