"""``genoray`` command line. Each command calls the same function as the Python API:

quickstart -> genoray.quickstart.run_quickstart
embed      -> genoray.embed.embed_sequences
index      -> genoray.index.build_index
plan       -> genoray.plan.estimate / plan_store
train      -> genoray.train.train_head
evaluate   -> genoray.quickstart.evaluation_report (genoray.train.evaluate_store; a study: genoray.evaluate.evaluate)
predict    -> genoray.predictor.Predictor
publish    -> genoray.bundle.write_bundle + publish
bundles    -> genoray.bundle.list_versions
reindex    -> genoray.reindex.reindex
serve      -> genoray.serve.build_app
shift      -> genoray.shift.ShiftDetector
convert-weights -> genoray.weights.convert_weights

Config flags are generated from the dataclasses in genoray.config (genoray.flags); exit codes
are ``EXIT_CODES`` (also in ``genoray --help`` and the README).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from genoray import cli_args
from genoray.cli_args import EMBED, HEAD, INDEX, PLAN_INDEX, REINDEX, SERVE, SHIFT, _encoder, _read_cfg, _split
from genoray.config import IndexConfig
from genoray.exitcodes import (  # noqa: F401
    EXIT_BUG,
    EXIT_CODES,
    EXIT_EMPTY,
    EXIT_GATE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_USAGE,
    NothingWritten,
    nothing_written,
    why_empty,
)
from genoray.flags import build
from genoray.metrics import strict_dumps as dumps
from genoray.metrics import strict_json
from genoray.quiet import ray_running, stop_ray

log = logging.getLogger(__name__)

NAN_REASON = ("undefined for this data, written as null (AUROC needs both classes in the test split; "
              "MCC and F1 need predictions and labels of more than one class)")


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
    from genoray import fs

    manifest = fs.read_json(fs.join(a.out, "store.json"))
    rejects = [fs.join(a.out, p["rejects"]) for p in manifest["parts"] if p.get("rejects")]
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
        nothing_written(a, why_empty(report.read, out["rejected_by_reason"], report.failed, report.units))
        return EXIT_PARTIAL if report.failed else EXIT_OK
    return EXIT_OK if report.status == "complete" else EXIT_PARTIAL


def cmd_index(a: argparse.Namespace) -> int:
    from genoray.index import build_index

    if a.ray:
        from genoray.runtime import init_ray

        init_ray()
    _print(asdict(build_index(a.store, a.out, build(a, INDEX), use_ray=a.ray)), True)
    return 0


def cmd_plan(a: argparse.Namespace) -> int:
    """``genoray plan``: predicted memory and time per stage; exit 4 when it does not fit."""
    from genoray.plan import ClusterSpec, estimate, format_plan, plan_store

    cluster = ClusterSpec(nodes=a.nodes, memory_per_node_gb=a.memory_per_node, cpus_per_node=a.cpus_per_node,
                          gpus_per_node=a.gpus_per_node)
    budget = a.memory_budget_mb or int(0.5 * cluster.memory_bytes() * cluster.nodes / 2**20)
    cfg = build(a, PLAN_INDEX, memory_budget_mb=budget)
    if a.store:
        plan = plan_store(a.store, cfg, cluster, embed_rate=a.embed_rate)
    elif a.n and a.dim:
        plan = estimate(a.n, a.dim, cfg, cluster, encoder=a.encoder, embed_rate=a.embed_rate)
    else:
        raise SystemExit("genoray plan: give --n and --dim, or --store")
    _print(plan.to_dict(), a.json, format_plan(plan))
    return EXIT_OK if plan.fits else EXIT_GATE


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
    from genoray import fs

    index, head = fs.local_copy(a.index, "indexes", "manifest.json"), fs.local_copy(a.head, "heads", "head.json")
    rep = evaluation_report(a.target, index, head, split=_split(a.split), train_split=_split(a.train_split),
                            bootstrap=a.bootstrap, seed=a.seed)
    _print(rep, a.json, format_evaluation(rep))
    return EXIT_OK


def cmd_predict(a: argparse.Namespace) -> int:
    from genoray.predict_output import PredictionWriter, join_neighbour_records
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
    writer = PredictionWriter(a.out, a.format, [str(c) for c in predictor.head.classes_], a.with_sequences)
    try:
        for batch in iter_sequences(a.inputs, report=report):
            ids, seqs = batch["seq_id"].to_pylist(), batch["sequence"].to_pylist()
            preds = [p.to_dict() for p in predictor.predict(seqs, ids=ids, k=a.k)]
            if a.with_sequences:  # joined after the last batch: the source files are read once
                rows += preds
            else:
                writer.write(preds)
        if a.with_sequences:
            assert predictor.index is not None  # loaded with its index
            missing = join_neighbour_records(predictor.index.manifest, rows)
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
        nothing_written(a, why_empty(report.read, summary["rejected_by_reason"], [], 1))
    return EXIT_OK


def cmd_publish(a: argparse.Namespace) -> int:
    from genoray.bundle import current_version, publish, write_bundle

    if a.version:
        publish(a.root, a.version)
    elif a.index and a.head:
        target = None
        if a.target:  # a bundle built for a target: its class priors travel in head/priors.json
            from genoray.sequences import read_sequences

            target = read_sequences(a.target)[0]["sequence"].to_pylist()
        groups = a.shard_groups
        if a.group_memory_mb is not None:
            from genoray.scatter import shard_groups

            groups = shard_groups(a.index, memory_budget=int(a.group_memory_mb * 2**20))
        publish(a.root, write_bundle(a.root, a.index, a.head, target=target, shard_groups=groups))
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
    """``genoray serve``: :func:`genoray.serve.run_service` until Ctrl-C or SIGTERM."""
    from genoray.serve import run_service

    run_service(build(a, SERVE, root=a.root))
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


def cmd_convert_weights(a: argparse.Namespace) -> int:
    """Convert a pickle checkpoint to safetensors; print the report and the weights sha256."""
    from genoray.weights import convert_weights

    report = convert_weights(a.src, a.dst)
    _print(report, True)
    print(f"weights_sha256 {report['weights_sha256']} (pinned by the spec of --encoder hf:{a.dst})", file=sys.stderr)
    return 0


COMMANDS = {"quickstart": cmd_quickstart, "embed": cmd_embed, "index": cmd_index, "plan": cmd_plan, "train": cmd_train,
            "evaluate": cmd_evaluate, "predict": cmd_predict, "publish": cmd_publish, "bundles": cmd_bundles,
            "reindex": cmd_reindex, "serve": cmd_serve, "shift": cmd_shift,
            "convert-weights": cmd_convert_weights}


def build_parser() -> argparse.ArgumentParser:
    """The ``genoray`` parser (see :mod:`genoray.cli_args`)."""
    return cli_args.build_parser(COMMANDS)


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

    ray_before = ray_running()
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
            stop_ray(keep=getattr(args, "keep", False))


def _bug(args: argparse.Namespace, e: BaseException) -> int:
    import traceback

    if args.verbose:
        traceback.print_exc()
    print(f"genoray {args.command}: internal error (a bug in genoray, please report it): {type(e).__name__}: {e}"
          + ("" if args.verbose else " (-v shows the traceback)"), file=sys.stderr)
    return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
