"""``reindex``: the nightly job. Embed new labeled files, rebuild, gate, publish.

1. Embed all input files into the long-lived store in ``work_dir/store``. The store is
   resumable, so files embedded on earlier nights are skipped and only new ones do model work.
   The encoder (including a fitted position window) and the cleaning policy are the store's:
   what it recorded on its first night is what every later night uses. A night whose inputs
   would drop units the store holds (a file left out or changed) is refused unless
   ``cfg.embed.append`` or ``cfg.embed.overwrite`` (``--append``/``--overwrite``).
2. Index old + new rows and refit the head, in ``work_dir/builds/<version>``. When the current
   bundle's index came from this store and the store only grew, the new rows are added to it
   as a delta shard with its trained quantizer (:func:`genoray.index.delta.extend_index`: old
   shard files are hard-linked, not rebuilt), unless a drift rule says retrain: the shift
   test flags the new rows, or recall@10 with the delta stays below ``recall_floor``. Then (and
   on the first night, or with ``incremental=False``) the index is rebuilt from scratch.
   The head is refitted, except on an incremental night that adds at most
   ``head_refit_fraction`` of the index's rows, brings no new class and keeps the head settings:
   the current bundle's head is then carried over (:func:`head_refit_reason`), so the night costs its
   delta; with content-addressed bundles its files are not even uploaded again.
   Store parts unchanged since their last verification are not re-hashed (``verified.json``).
3. Gate: recall@10 of the new index >= ``recall_floor``; fused accuracy on the held-out split
   not worse than the current bundle's on the same rows by more than ``max_accuracy_drop``;
   and a shift summary of the held-out rows under the current bundle (mean OOD score, fraction
   above 0.99) written beside it. Both heads are scored on the same seeded, class-stratified
   sample of at most ``EvaluateConfig.max_test_rows`` held-out rows (every row of a smaller
   split), read in two streamed passes, with the new index loaded once, memory-mapped;
   ``gate.json`` states the sample's size and each accuracy's Wilson 95% interval.
4. If the gate passes, write the bundle, publish it (atomic ``CURRENT`` flip; serving replicas
   swap on their own), and collect old versions nobody leases. If it fails, nothing changes
   and ``gate.json`` says why.

A Ray job runs once: schedule it with cron or a Kubernetes CronJob (see docs/serving.md, "Nightly reindex").

``work_dir`` and the bundle root may be on object storage (``s3://``, ``gs://``): the store
lives there; a night's head (and an incremental index) are then built in a node-local temp dir
and copied to ``work_dir/builds/<version>`` (``gate.json`` last) after the bundle is written.
With ``use_ray`` the index is built by Ray tasks spread over the cluster, which hand their files
on only through the work URI (a full build is written to ``work_dir/builds/<version>/index``
directly; an incremental night stages its new partitions under ``.../staging``), so the nodes
need share nothing but object storage.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genoray.bundle import collect_garbage, current_version, new_version_name, publish, version_dir
from genoray.bundle.manifest import HEAD_DIR, INDEX_DIR
from genoray.config import CleanPolicy, EncoderChoice, EvaluateConfig, HeadConfig, ReadConfig, ReindexConfig
from genoray.embedding.job import embed_sequences
from genoray.embedding.store import EmbeddingStore, has_manifest, read_encoder_record, read_manifest
from genoray.encoders import Encoder, encoder_from_name, encoder_from_spec
from genoray.evaluation.metrics import classification_metrics
from genoray.evaluation.report import evaluate_store
from genoray.evaluation.sampling import read_sample, wilson_interval
from genoray.evaluation.shift import drift_rule
from genoray.heads import FusedHead, read_head_manifest
from genoray.index import build_index
from genoray.index import read_manifest as read_index_manifest
from genoray.index.core import read_ids
from genoray.index.delta import RetrainNeeded, extend_index
from genoray.infra import fs
from genoray.pipeline.publish import write_bundle
from genoray.pipeline.train import train_head
from genoray.predict import Predictor

GATE = "gate.json"
STORE = "store"
BUILDS = "builds"

log = logging.getLogger(__name__)


@dataclass
class ReindexReport:
    """What one reindex run did: version, whether it was published and why not, gate and timings."""

    version: str
    published: bool
    reasons: list[str]
    gate: dict[str, Any]
    embed: dict[str, Any]
    seconds: dict[str, float]


def _current_on(root: Any, store: EmbeddingStore, split: str, trust_remote_code: bool,
                cfg: EvaluateConfig) -> dict[str, Any] | None:
    """Metrics (accuracy with its Wilson 95% interval) and shift summary of the current bundle on
    the same bounded stratified sample of this store's held-out rows that the new head was scored
    on (:func:`genoray.evaluation.sampling.read_sample` with ``cfg``'s cap and seed)."""
    if current_version(root) is None:
        return None
    predictor, doc = Predictor.from_bundle(root, mmap=True, trust_remote_code=trust_remote_code)
    if doc.fingerprint != store.fingerprint:
        return {"version": doc.version, "comparable": False, "metrics": doc.metrics.get("new", {}).get("fused")}
    sample = read_sample(store, split, cfg.max_test_rows, cfg.seed)
    test = sample.rows
    proba, sims, _ = predictor.predict_vectors(test.vectors, list(test.ids))
    ood = predictor.head.ood_score(sims[:, -1])
    classes = np.asarray(predictor.head.classes_, dtype=object)
    right = int(np.sum(classes[np.argmax(proba, axis=1)] == np.asarray(test.labels, dtype=object)))
    return {"version": doc.version, "comparable": True, "sample": sample.describe(),
            "metrics": {**classification_metrics(test.labels, proba, classes),
                        "accuracy_wilson95": list(wilson_interval(right, len(test)))},
            "shift": {"mean_ood_score": float(np.mean(ood)), "fraction_ood_above_0.99": float(np.mean(ood > 0.99)),
                      "rows": len(test)}}


def _store_settings(store_dir: str, encoder: Encoder | None, read_cfg: ReadConfig,
                    trust_remote_code: bool = False) -> tuple[Encoder, ReadConfig]:
    """The encoder and cleaning policy of a night: the long-lived store's when it has them. An
    encoder given as ``None`` and the default policy mean "the store's"; a policy that differs
    from the store's is refused (a store never mixes two; an encoder that differs is refused
    by the embedding job)."""
    rec = read_encoder_record(store_dir)
    if encoder is None:
        encoder = encoder_from_spec(rec.requested, trust_remote_code) if rec is not None else encoder_from_name(EncoderChoice.encoder)
    if has_manifest(store_dir) and (clean := read_manifest(store_dir).clean) is not None and read_cfg.clean != clean:
        if read_cfg.clean != CleanPolicy():
            raise ValueError(f"{store_dir}: the store was cleaned with {clean}; a reindex cleans new files the same "
                             "way: give the same cleaning settings, or none (then the store's are used)")
        read_cfg = dataclasses.replace(read_cfg, clean=clean)
    return encoder, read_cfg


def _plain(x: Any) -> Any:
    """``x`` as JSON reads it back (tuples become lists), so settings compare as recorded."""
    return json.loads(json.dumps(x))


def head_refit_reason(head_dir: Path, index_dir: Path, head_cfg: HeadConfig, fraction: float) -> str | None:
    """Why the current head (``head_dir``) must be refitted for the incrementally extended index
    in ``index_dir``, or ``None`` when it can be carried over: the delta shard
    holds at most ``fraction`` of the index's rows, no label the head lacks, and the head was
    fitted with ``head_cfg``'s settings. Reads the index manifest and the delta's id table only."""
    if fraction <= 0:
        return "head_refit_fraction is 0: refit every night"
    idx = read_index_manifest(index_dir)
    delta = idx.build.delta_rows if idx.build else 0
    if not delta or delta > fraction * (idx.ntotal - delta):
        return f"{delta} new rows of {idx.ntotal} exceed head_refit_fraction {fraction}"
    head = read_head_manifest(head_dir)
    if _plain(head.params) != _plain(FusedHead.from_config(head_cfg).get_params()):
        return "the head settings differ from the current head's"
    labels = set(read_ids(index_dir / idx.shards[-1].ids).column("label").to_pylist())
    if new := sorted(str(x) for x in labels - set(head.classes)):
        return f"the new rows bring classes the current head lacks: {new[:5]}"
    return None


def reindex(inputs, work_dir: str | Path, bundle_root: str | Path, encoder: Encoder | None = None,
            read_cfg: ReadConfig | None = None, cfg: ReindexConfig | None = None, use_ray: bool = True,
            trust_remote_code: bool = False) -> ReindexReport:
    """Run the nightly reindex (see the module docstring). ``encoder``: ``None`` takes the one the
    store in ``work_dir`` recorded (the default encoder on its first night); the cleaning policy
    is the store's too (see :func:`_store_settings`). ``trust_remote_code``: the command's
    ``--trust-remote-code``, the only thing that lets the store's or bundle's transformers model
    run its own code (their recorded value never does)."""
    cfg = cfg or ReindexConfig()
    work, root = fs.as_path(work_dir), fs.as_path(bundle_root)
    store_dir = fs.join(work, STORE)
    t0 = time.perf_counter()
    encoder, read_cfg = _store_settings(store_dir, encoder, read_cfg or ReadConfig(), trust_remote_code)
    emb = embed_sequences(inputs, store_dir, encoder, read_cfg, cfg.embed, use_ray=use_ray)
    t1 = time.perf_counter()
    version = new_version_name()
    remote_work = fs.is_remote(work)  # then the build happens in a node-local temp dir, uploaded at the end
    build = Path(tempfile.mkdtemp(prefix="genoray-reindex-")) / version if remote_work \
        else Path(work) / BUILDS / version
    # Ray tasks on other nodes hand their files on through the work URI, never a driver-local path
    on_cluster = remote_work and use_ray
    index_dir: str | Path = fs.join(work, BUILDS, version, "index") if on_cluster else build / "index"
    stage = fs.join(work, BUILDS, version, "staging") if on_cluster else None
    idx, index_mode = None, {"mode": "full", "reason": "first build"}
    cur = current_version(root)
    if cfg.incremental and cur is not None:
        try:
            idx = extend_index(version_dir(root, cur) / INDEX_DIR, store_dir, build / "index", cfg.recall_floor,
                               cfg.index, drift=drift_rule(cfg.shift_alpha, cfg.index.seed), use_ray=use_ray,
                               stage=stage)
            index_dir = build / "index"
            index_mode = {"mode": "incremental", "base": cur, "delta_rows": idx.predicted["delta_rows"],
                          "exact_rows_read": idx.predicted["exact_rows_read"], "recall_check": idx.predicted["calibration"]}
        except RetrainNeeded as e:
            shutil.rmtree(build / "index", ignore_errors=True)
            if stage:
                fs.delete_dir(stage)
            index_mode = {"mode": "full", "reason": str(e)}
    elif not cfg.incremental:
        index_mode["reason"] = "incremental reindex is off"
    if idx is None:
        idx = build_index(store_dir, index_dir, cfg.index, use_ray=use_ray)
    refit: str | None = "the index was rebuilt"
    if index_mode["mode"] == "incremental" and cur is not None:
        carried = version_dir(root, cur) / HEAD_DIR
        refit = head_refit_reason(carried, build / "index", cfg.head, cfg.head_refit_fraction)
        if refit is None:
            shutil.copytree(carried, build / "head")
            head_mode = {"mode": "carried", "base": cur}
    if refit is not None:
        train_head(store_dir, index_dir, build / "head", cfg.head, trust_remote_code)
        head_mode = {"mode": "refit", "reason": refit}
    eval_cfg = EvaluateConfig(split=cfg.eval_split)
    new = evaluate_store(store_dir, index_dir, build / "head", eval_cfg)
    t2 = time.perf_counter()
    store = EmbeddingStore(store_dir)
    current = _current_on(root, store, cfg.eval_split, trust_remote_code, eval_cfg)
    reasons = []
    if emb.status != "complete":
        reasons.append(f"embedding was partial: {len(emb.failed)} file(s) failed: {[f['path'] for f in emb.failed]}")
    if idx.recall_at_10 < cfg.recall_floor:
        reasons.append(f"recall@10 {idx.recall_at_10:.3f} < floor {cfg.recall_floor}")
    if current and current.get("metrics"):
        drop = current["metrics"]["accuracy"] - new["fused"]["accuracy"]
        if drop > cfg.max_accuracy_drop:
            reasons.append(f"held-out accuracy {new['fused']['accuracy']:.4f} is {drop:.4f} below the current "
                           f"bundle {current['version']} ({current['metrics']['accuracy']:.4f}); "
                           f"allowed drop {cfg.max_accuracy_drop}")
    gate = {"version": version, "passed": not reasons, "reasons": reasons, "recall_at_10": idx.recall_at_10,
            "index_build": {**index_mode, "seconds": idx.seconds, "add_nodes": idx.add_nodes}, "head": head_mode,
            "index": idx.factory, "ntotal": idx.ntotal, "new": new, "current": current,
            "embed": {k: v for k, v in emb.to_dict().items() if k != "failed"}}
    fs.write_json(build / GATE, gate)
    published = False
    if not reasons:
        write_bundle(root, index_dir, build / "head", metrics=gate, version=version,
                     trust_remote_code=trust_remote_code)
        publish(root, version, if_current=cur)  # never undo a rollback made while this night ran
        collect_garbage(root, keep=cfg.keep_versions)
        published = True
    if remote_work:
        fs.upload_dir(build, fs.join(work, BUILDS, version), last=[GATE])
        shutil.rmtree(build.parent, ignore_errors=True)
    seconds = {"embed": round(t1 - t0, 2), "build": round(t2 - t1, 2), "total": round(time.perf_counter() - t0, 2)}
    log.info("reindex %s: version %s %s; %s s", root, version,
             "published" if published else f"not published ({'; '.join(reasons)})", seconds)
    return ReindexReport(version, published, reasons, gate, emb.to_dict(), seconds)
