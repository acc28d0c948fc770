"""``genoray`` command line. Each command calls the same function as the Python API:

quickstart -> genoray.pipeline.run_quickstart
embed      -> genoray.embedding.embed_sequences
index      -> genoray.index.build_index
plan       -> genoray.index.capacity.estimate / plan_store / plan_index
train      -> genoray.pipeline.train_head
evaluate   -> genoray.evaluation.evaluation_report (a study: genoray.evaluation.evaluate)
predict    -> genoray.predict.Predictor
publish    -> genoray.pipeline.write_bundle + genoray.bundle.publish
bundles    -> genoray.bundle.list_versions
reindex    -> genoray.pipeline.reindex
serve      -> genoray.serving.run_service
shift      -> genoray.evaluation.ShiftDetector
convert-weights -> genoray.encoders.weights.convert_weights

Setting flags are generated from the dataclasses in :mod:`genoray.config` (:mod:`genoray.cli.flags`);
exit codes are :data:`~genoray.cli.exitcodes.EXIT_CODES` (also in ``genoray --help`` and the
README). A command imports its stage only when it runs (``# lazy:``), so ``genoray --help`` and
a usage error answer without loading Ray, FAISS, torch or scikit-learn.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path

from genoray.cli import args as cli_args
from genoray.cli.args import (
    EMBED,
    ENCODER,
    EVALUATE,
    EVALUATE_OF_READ,
    HEAD,
    HF,
    INDEX,
    INDEX_OF_READ,
    KMER,
    PLAN,
    POS,
    PREDICT,
    PUBLISH,
    READ,
    REINDEX,
    SERVE,
    SHIFT,
    SHIFT_SELECT,
    TRUST,
)
from genoray.cli.exitcodes import (
    EXIT_BUG,
    EXIT_CUT_OFF,
    EXIT_EMPTY,
    EXIT_GATE,
    EXIT_INTERRUPTED,
    EXIT_KILLED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_SHIFT,
    EXIT_TERMINATED,
    EXIT_USAGE,
    NothingWritten,
    note,
    nothing_written,
    print_result,
    why_empty,
)
from genoray.cli.flags import build, given
from genoray.cli.parsing import parse_args
from genoray.cli.quiet import NativeStderrFilter, quiet_python_loggers, ray_running, run_supervised, stop_ray
from genoray.config import ReadConfig, load_study
from genoray.encoders import encoder_from_spec
from genoray.infra import fs
from genoray.infra.artifacts import strict_dumps
from genoray.infra.errors import InvariantError
from genoray.infra.runtime import init_ray
from genoray.infra.stopping import Terminated, stop_on_signals
from genoray.sequences import ReadReport, SequenceFormatError, iter_sequences, read_sequences

log = logging.getLogger(__name__)

QUICKSTART_BOTH = ("kmer", "kmer-pos")  # --encoder both


def _encoder(a: argparse.Namespace, name: str | None = None):
    """The encoder named by ``name`` (default: ``--encoder``) with the settings of its flag
    groups, or ``--encoder-from``'s."""
    from genoray.encoders import encoder_from_name  # lazy: torch and transformers behind the hf encoder
    from genoray.pipeline import encoder_from_artifact  # lazy: the whole pipeline

    chosen = build(a, ENCODER).encoder
    if getattr(a, "encoder_from", None):
        if given(a, ENCODER):
            raise ValueError("give --encoder or --encoder-from, not both")
        return encoder_from_artifact(a.encoder_from, trust_remote_code=bool(getattr(a, "hf.trust_remote_code", False)))
    name = name or chosen
    if name.startswith("hf:"):  # hf:<model>, or hf:<model>+kmer / +kmer-pos (fusion)
        base, plus, suffix = name.rpartition("+")
        model = base[3:] if plus and suffix in ("kmer", "kmer-pos") else name[3:]
        return encoder_from_name(name, hf=build(a, HF, model=model), kmer=build(a, KMER), position=build(a, POS))
    return encoder_from_name(name, kmer=build(a, KMER), position=build(a, POS))


def cmd_quickstart(a: argparse.Namespace) -> int:
    """Embed, index, train and evaluate one labeled file; print the evaluation."""
    import shutil
    import tempfile

    from genoray.pipeline.quickstart import format_result, run_quickstart  # lazy: ray, faiss, scikit-learn

    chosen = build(a, ENCODER).encoder
    encoders = QUICKSTART_BOTH if chosen == "both" else (chosen,)
    read = build(a, READ)
    workdir = a.workdir or tempfile.mkdtemp(prefix="genoray-quickstart-")
    try:
        result = run_quickstart(a.data, workdir, encoders, head_cfg=build(a, HEAD), read_cfg=read,
                                use_ray=not a.no_ray, index_cfg=build(a, INDEX_OF_READ, split=read.train_split),
                                embed_cfg=build(a, EMBED), eval_cfg=build(a, EVALUATE_OF_READ, split=read.test_split),
                                make_encoder=lambda name: _encoder(a, name))
        print_result(result, a.json, format_result(result))
    finally:
        if not a.workdir and not a.keep:
            shutil.rmtree(workdir, ignore_errors=True)
            note(f"genoray quickstart: removed the work dir {workdir} (keep it with --keep or --workdir DIR)")
    return EXIT_OK


def cmd_embed(a: argparse.Namespace) -> int:
    """Embed files into a store; print the report (exit 3 partial, 6 nothing written)."""
    from genoray.embedding import embed_sequences, read_manifest  # lazy: ray, pyarrow

    report = embed_sequences(a.inputs, a.out, _encoder(a), read_cfg=build(a, READ), embed_cfg=build(a, EMBED),
                             use_ray=not a.no_ray)
    out = report.to_dict()
    rejects = [fs.join(a.out, p.rejects) for p in read_manifest(a.out).parts if p.rejects]
    out["rejects_tables"] = rejects  # Parquet: source file, record number, seq_id, reason
    # complete: every file read, rows written; partial: some files failed, rows written (exit 3);
    # failed: files failed and nothing was written; empty: nothing to write (both exit 6)
    out["outcome"] = ("failed" if report.failed else "empty") if report.written == 0 else \
        ("partial" if report.failed else "complete")
    print_result(out, True)
    if report.failed and report.written:  # nothing written: the line below says why, once
        note(f"genoray embed: {len(report.failed)} of {report.units} input units failed (listed under \"failed\")")
    if out["rejected"]:
        note(f"genoray embed: {out['rejected']} records rejected {out['rejected_by_reason']}; "
             f"rejects tables: {', '.join(rejects) or '(none kept)'}")
    if report.written == 0:
        nothing_written(a, why_empty(report.read, out["rejected_by_reason"], report.failed, report.units, a.inputs))
        return EXIT_PARTIAL if report.failed else EXIT_OK
    return EXIT_OK if report.status == "complete" else EXIT_PARTIAL


def cmd_index(a: argparse.Namespace) -> int:
    """Build an index from a store (on Ray with ``--ray``); print its report."""
    from genoray.index import build_index  # lazy: faiss

    if a.ray:
        init_ray()
    print_result(asdict(build_index(a.store, a.out, build(a, INDEX), use_ray=a.ray)), True)
    return EXIT_OK


def cmd_plan(a: argparse.Namespace) -> int:
    """``genoray plan``: predicted memory and time per stage; exit 4 when it does not fit."""
    from genoray.index import capacity as cap  # lazy: pyarrow, faiss

    plan_cfg = build(a, PLAN)
    cluster = plan_cfg.cluster
    cfg = build(a, INDEX)  # the same settings and defaults `genoray index` builds with
    probe = plan_cfg.probe_fraction or (cap.tuned_probe_fraction(a.index) if a.index else 0.0)
    if a.store:
        plan = cap.plan_store(a.store, cfg, cluster, embed_rate=plan_cfg.embed_rate, probe_fraction=probe)
    elif plan_cfg.n and plan_cfg.dim:
        plan = cap.estimate(plan_cfg.n, plan_cfg.dim, cfg, cluster, encoder=build(a, ENCODER).encoder,
                            embed_rate=plan_cfg.embed_rate, probe_fraction=probe)
    elif a.index:
        plan = cap.plan_index(a.index, cfg, cluster, embed_rate=plan_cfg.embed_rate, probe_fraction=probe)
    else:
        raise ValueError("give --n N and --dim D (rows and vector size to plan for), or --store STORE, or --index DIR")
    print_result(plan.to_dict(), a.json, cap.format_plan(plan))
    return EXIT_OK if plan.fits else EXIT_GATE


def cmd_train(a: argparse.Namespace) -> int:
    """Fit the fused head over an index; print what was chosen."""
    from genoray.pipeline import train_head  # lazy: faiss, scikit-learn

    print_result(train_head(a.store, a.index, a.out, build(a, HEAD), build(a, TRUST).trust_remote_code), True)
    return EXIT_OK


def cmd_evaluate(a: argparse.Namespace) -> int:
    """Score a head on a held-out split of a store, or run a study (``STUDY.yaml --out DIR``)."""
    if a.target.endswith((".yaml", ".yml")):
        from genoray.evaluation import evaluate  # lazy: faiss, scikit-learn, torch for hf encoders
        from genoray.evaluation.study import REPORT_MD  # lazy: as above

        if not a.out:
            raise ValueError("a study needs --out DIR for its report (Markdown and JSON)")
        report = evaluate(load_study(a.target), a.out)
        print(Path(a.out, REPORT_MD).read_text())
        note(json.dumps(report["cost"]))
        return EXIT_OK
    from genoray.evaluation import evaluation_report, format_evaluation  # lazy: faiss, scikit-learn

    if not (a.index and a.head):
        raise ValueError("evaluating a store needs --index and --head")
    rep = evaluation_report(a.target, a.index, a.head, build(a, EVALUATE), curves=bool(a.out))
    if a.out:  # the same report as JSON, plus report.html and its charts
        from genoray.evaluation.html import write_evaluation  # lazy: as above

        note(f"report: {write_evaluation(rep, a.out)}")
        rep.pop("curves")
    print_result(rep, a.json, format_evaluation(rep))
    return EXIT_OK


def cmd_predict(a: argparse.Namespace) -> int:
    """Predict the records of files with the index's cleaning policy; write them, counts on stderr."""
    from genoray.predict import Predictor  # lazy: faiss, scikit-learn
    from genoray.predict.output import (  # lazy: faiss, scikit-learn
        PredictionWriter,
        adapt_from_files,
        join_neighbour_records,
    )

    cfg = build(a, PREDICT)
    if cfg.format == "parquet" and not a.out:
        raise ValueError("--format parquet needs --out FILE")
    predictor = Predictor.load(a.index, a.head, trust_remote_code=cfg.trust_remote_code)
    read_cfg = ReadConfig(clean=predictor.policy)  # the index's policy: what the service accepts, batch accepts
    adaptation = adapt_from_files(predictor, a.target, getattr(a, "target_source", None), read_cfg)
    report = ReadReport()
    rows: list[dict] = []
    writer = PredictionWriter(a.out, cfg.format, [str(c) for c in predictor.head.classes_], cfg.with_sequences)
    done = False
    try:
        for batch in iter_sequences(a.inputs, read_cfg, report=report):
            ids, seqs = batch["seq_id"].to_pylist(), batch["sequence"].to_pylist()
            preds = [p.to_dict() for p in predictor.predict(seqs, ids=ids, k=cfg.k, cleaned=True)]
            if cfg.with_sequences:  # joined after the last batch: the source files are read once
                rows += preds
            else:
                writer.write(preds)
        if cfg.with_sequences:
            assert predictor.index is not None  # loaded with its index
            missing = join_neighbour_records(predictor.index.manifest, rows)
            writer.write(rows)
        done = True
    finally:
        writer.close(commit=done)
    summary = report.to_dict()
    summary["predicted"] = writer.n
    if cfg.with_sequences:
        summary["neighbours_without_sequence"] = missing
    if adaptation is not None:
        summary["target_adaptation"] = adaptation
    note(strict_dumps(summary))
    if writer.n == 0:
        nothing_written(a, why_empty(report.read, summary["rejected_by_reason"], [], 1, a.inputs))
    return EXIT_OK


def cmd_publish(a: argparse.Namespace) -> int:
    """Write a new bundle version and make it CURRENT, or re-publish a version (rollback)."""
    from genoray.bundle import current_version, publish  # lazy: scikit-learn (head manifests)
    from genoray.pipeline import write_bundle  # lazy: faiss, scikit-learn

    if a.version:
        publish(a.root, a.version)
    elif a.index and a.head:
        # a bundle built for a target: its class priors travel in head/priors.json
        target = read_sequences(a.target)[0]["sequence"].to_pylist() if a.target else None
        publish(a.root, write_bundle(a.root, a.index, a.head, build(a, PUBLISH), target=target,
                                     trust_remote_code=build(a, TRUST).trust_remote_code))
    else:
        raise ValueError("give --index and --head (new version) or --version (rollback / re-publish)")
    print_result({"current": current_version(a.root)}, True)
    return EXIT_OK


def cmd_bundles(a: argparse.Namespace) -> int:
    """List a bundle root's versions (``*`` CURRENT); exit 2 when one is damaged."""
    from genoray.bundle import list_versions  # lazy: scikit-learn (head manifests)

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
    print_result(rows, a.json, "\n".join(lines))
    bad = [r for r in rows if "error" in r or r.get("verified", "ok") != "ok"]
    return EXIT_USAGE if bad else EXIT_OK


def cmd_reindex(a: argparse.Namespace) -> int:
    """The nightly reindex; exit 4 when the gate refuses the new version."""
    from genoray.pipeline import reindex  # lazy: ray, faiss, scikit-learn

    read = build(a, READ)
    cfg = build(a, REINDEX)
    cfg = dataclasses.replace(cfg, eval_split=read.test_split or cfg.eval_split,
                              index=dataclasses.replace(cfg.index, split=read.train_split))
    named = bool(a.encoder_from) or bool(given(a, ENCODER))  # otherwise the store's encoder
    rep = reindex(a.inputs, a.work, a.bundles, _encoder(a) if named else None, read_cfg=read, cfg=cfg,
                  use_ray=not a.no_ray, trust_remote_code=bool(getattr(a, "hf.trust_remote_code", False)))
    print_result(asdict(rep), True)
    return EXIT_OK if rep.published else EXIT_GATE


def cmd_serve(a: argparse.Namespace) -> int:
    """``genoray serve``: :func:`genoray.serving.run_service` until SIGTERM or SIGINT, in a child
    that this process supervises (:func:`genoray.serving.app.supervise_service`); exit 0, or 7
    when in-flight requests were cut off (the drain timed out, or a second signal)."""
    from genoray.serving.app import SERVICE_CHILD_ENV, run_service, supervise_service  # lazy: ray serve, faiss

    cfg = build(a, SERVE, root=a.root)
    if os.environ.get(SERVICE_CHILD_ENV):
        return EXIT_OK if run_service(cfg, a.json) else EXIT_CUT_OFF
    return supervise_service(cfg, [sys.executable, "-m", "genoray.cli", *a.argv], forced=EXIT_CUT_OFF)


def cmd_shift(a: argparse.Namespace) -> int:
    """Compare two stores (MMD, classifier test, OOD share); exit 5 on a shift."""
    from genoray.embedding import EmbeddingStore  # lazy: ray (the embedding job's pool)
    from genoray.evaluation.shift import ShiftDetector, embedding_map, plot_shift, store_samples  # lazy: sklearn

    if a.plot:  # check before the (long) test, not after it
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise ValueError("--plot needs matplotlib: pip install 'genoray[plot]' (or drop --plot)")
    select = build(a, SHIFT_SELECT)
    ref_store, new_store = EmbeddingStore(a.reference), EmbeddingStore(a.new)
    if ref_store.fingerprint != new_store.fingerprint:
        raise ValueError(f"stores use different encoders ({ref_store.fingerprint} vs {new_store.fingerprint}): "
                         f"embed both with the same encoder (e.g. genoray embed NEW_FILES --encoder-from {a.reference} "
                         "--out NEW_STORE)")
    cfg = build(a, SHIFT)
    ref_sample, new_sample = store_samples(ref_store, new_store, select, cfg)  # bounded: never a whole store
    ref, new = ref_sample.rows, new_sample.rows
    # the per-row OOD share uses the predictor's score: class-conditional when the reference is
    # labeled, length-matched when both stores' source sequences can be re-read (sampled rows only)
    labels = ref.labels if all(v is not None for v in ref.labels) else None
    ref_seqs, new_seqs = ref_store.sequences(ref.ids), new_store.sequences(new.ids)
    enc = encoder_from_spec(ref_store.encoder_spec) if ref_seqs is not None and new_seqs is not None else None
    det = ShiftDetector(cfg).fit(ref.vectors, labels, ref_seqs if enc else None, enc)
    groups = {"label": new.labels, "domain": new.domains}.get(select.group_by)
    report = det.score(new.vectors, groups, new_seqs if enc else None, enc).to_dict()
    report["sample"] = {"reference": ref_sample.describe(), "new": new_sample.describe()}
    if a.plot:
        plot_shift(det, new.vectors, a.plot)
        report["plot"] = a.plot
    if a.out:  # shift.json with the map's points, report.html and its charts
        from genoray.evaluation.html import write_shift  # lazy: as above

        report["html"] = str(write_shift(report, embedding_map(det, new.vectors), a.out))
    print_result(report, True)
    return EXIT_SHIFT if report["is_shift"] else EXIT_OK


def cmd_convert_weights(a: argparse.Namespace) -> int:
    """Convert a pickle checkpoint to safetensors; print the report and the weights sha256."""
    from genoray.encoders.weights import convert_weights  # lazy: torch, safetensors

    report = convert_weights(a.src, a.dst)
    print_result(report, True)
    note(f"weights_sha256 {report['weights_sha256']} (pinned by the spec of --encoder hf:{a.dst})")
    return EXIT_OK


COMMANDS = {"quickstart": cmd_quickstart, "embed": cmd_embed, "index": cmd_index, "plan": cmd_plan, "train": cmd_train,
            "evaluate": cmd_evaluate, "predict": cmd_predict, "publish": cmd_publish, "bundles": cmd_bundles,
            "reindex": cmd_reindex, "serve": cmd_serve, "shift": cmd_shift,
            "convert-weights": cmd_convert_weights}


def build_parser() -> argparse.ArgumentParser:
    """The ``genoray`` parser (see :mod:`genoray.cli.args`)."""
    return cli_args.build_parser(COMMANDS)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (see :data:`~genoray.cli.exitcodes.EXIT_CODES`).

    SIGTERM and SIGINT stop a command cleanly (exit 143, 130: Ray shut down, temp dirs removed); a
    batch job on a Ray it starts, run from the command line (``argv`` not given), runs as a
    supervised child (:func:`~genoray.cli.quiet.run_supervised`; a second signal: exit 137)."""
    args = parse_args(build_parser(), argv)  # args.argv: the command line, for a command run again as a child
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR if args.quiet else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if argv is None and (rc := run_supervised(args, forced=EXIT_KILLED)) is not None:
        return rc
    if args.verbose:
        return _run(args)
    quiet_python_loggers()
    with NativeStderrFilter():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    ray_before = ray_running()
    try:
        with stop_on_signals():
            try:
                return args.func(args)
            finally:
                if not ray_before:
                    stop_ray(keep=getattr(args, "keep", False))
    except NothingWritten as e:
        print(f"genoray {args.command}: nothing written: {e} (exit {EXIT_EMPTY}; --allow-empty accepts this)",
              file=sys.stderr)
        return EXIT_EMPTY
    except (KeyboardInterrupt, Terminated) as e:  # a clean stop: what was committed is kept, a rerun resumes
        term = isinstance(e, Terminated)
        print(f"genoray {args.command}: {'SIGTERM' if term else 'interrupted (SIGINT)'}: stopped", file=sys.stderr)
        return EXIT_TERMINATED if term else EXIT_INTERRUPTED
    except (InvariantError, AssertionError) as e:
        return _bug(args, e)
    except (SequenceFormatError, OSError, ValueError, RuntimeError, ImportError) as e:  # input, settings, system
        print(f"genoray {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 (anything else is not the user's fault: report it as a bug)
        return _bug(args, e)


def _bug(args: argparse.Namespace, e: BaseException) -> int:
    import traceback

    if args.verbose:
        traceback.print_exc()
    print(f"genoray {args.command}: internal error (a bug in genoray, please report it): {type(e).__name__}: {e}"
          + ("" if args.verbose else " (-v shows the traceback)"), file=sys.stderr)
    return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
