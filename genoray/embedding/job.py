"""``embed_sequences``: a resumable, idempotent embedding job on Ray Data.

Work is split into *units*: one per FASTA/FASTQ file (gzip is not splittable), or a range of
row groups (about ``rows_per_unit`` rows) of a Parquet file. A unit's key is a hash of its
source (absolute path, size, mtime, row groups), the reading/cleaning config and the encoder
fingerprint, so a changed input or encoder never reuses stale vectors.

Ray Data runs the units on an actor pool (one encoder load per actor; fractional CPUs on
CPU-only hosts so the read stage is never starved; one GPU per actor when the cluster has
GPUs and the encoder is a transformers model). Each actor streams its unit through
read -> clean -> embed -> Parquet and commits it atomically::

    shards/<key>.parquet          embeddings (genoray.sequences.records.embedding_schema)
    shards/<key>.rejects.parquet  every rejected record: path, record, seq_id, reason
    shards/<key>.done.json        counts + sha256; written last, so it marks a finished unit

Only small per-unit summaries come back to the driver; its memory does not grow with the
corpus: the check that ids are unique runs as tasks over the units' sorted id-hash files
(``shards/<key>.ids.npy``, :mod:`genoray.embedding.dedup`). A rerun
skips units whose done marker and shard checksum are intact, so a crashed job resumes and a
finished one does no model work. A malformed file fails only its unit: the job records the
file and reason, commits the rest and reports ``status="partial"`` (or, with
``on_error="fail"``, raises). ``store.json`` is written last and lists exactly the committed
shards; readers never glob.

A run never drops what a store holds unless told to: when the store has committed units this
run would not write (other input files, the same files changed, other reading settings), it
is refused (:class:`StoreConflictError`) unless ``EmbedConfig.append`` (keep them and add
this run's units) or ``EmbedConfig.overwrite`` (fit the encoder again, delete them once this
run has committed). Rerunning the same job, or the same job with more files, resumes.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from genoray.config import EmbedConfig, ReadConfig
from genoray.embedding.dedup import DuplicateIdError as DuplicateIdError  # raised by embed_sequences
from genoray.embedding.dedup import check_unique_ids
from genoray.embedding.pool import run_on_ray
from genoray.embedding.shards import SHARDS, UnitFailure, UnitMarker, collect_garbage, committed_units, shard_is_done
from genoray.embedding.store import (
    ENCODER_FILE,
    EncoderRecord,
    StoreCounts,
    StoreManifest,
    has_manifest,
    read_encoder_record,
    read_manifest,
    write_encoder_record,
    write_manifest,
)
from genoray.embedding.unit import process_unit
from genoray.encoders import Encoder, encoder_from_spec, fingerprint, runs_remote_code
from genoray.infra import fs
from genoray.infra.artifacts import sha256_json
from genoray.infra.errors import InvariantError
from genoray.infra.progress import Progress
from genoray.infra.runtime import tune_allocator
from genoray.sequences import ReadReport, SequenceFormatError, expand_inputs, iter_file, plan_units, with_split_cutoffs
from genoray.sequences.records import SEQUENCE, SPLIT

log = logging.getLogger(__name__)
FIT_SAMPLE = 100_000


# -- the job ----------------------------------------------------------------------------
@dataclass
class EmbedReport:
    """What one run did. ``read == accepted + rejected`` and ``written == accepted - windowed +
    windows`` over all committed units (``windowed`` long records became ``windows`` rows, see
    ``CleanPolicy.long_records``); ``failed`` lists units whose file could not be parsed."""

    store: str
    fingerprint: str
    status: str
    read: int
    accepted: int
    rejected: Counter
    written: int
    units: int
    skipped: int
    failed: list[dict[str, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    windowed: int = 0
    windows: int = 0
    windows_rejected: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (what ``genoray embed`` prints)."""
        embed_s = self.seconds.get("embed", 0.0)
        return {
            "store": self.store, "fingerprint": self.fingerprint, "status": self.status,
            "read": self.read, "accepted": self.accepted, "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(sorted(self.rejected.items())), "written": self.written,
            **({"windowed": self.windowed, "windows": self.windows,
                "windows_rejected_by_reason": dict(sorted(self.windows_rejected.items()))} if self.windowed else {}),
            "units": self.units, "units_skipped": self.skipped, "units_failed": len(self.failed),
            "failed": self.failed, "seconds": self.seconds,
            "sequences_per_s": round(self.written / embed_s, 1) if embed_s > 0 and self.skipped < self.units else None,
        }


class StoreConflictError(ValueError):
    """A run would drop units an existing store holds (without ``append`` or ``overwrite``)."""


def _kept_units(out: str | Path, shard_dir: str | Path, units: list[dict], read_cfg: ReadConfig,
                embed_cfg: EmbedConfig) -> list[UnitMarker]:
    """The store's committed units that this run keeps although its plan does not write them:
    all of them with ``append``, none with ``overwrite`` (they are deleted after the commit);
    otherwise there must be none, else :class:`StoreConflictError` says what differs and what to do."""
    planned = {u["key"] for u in units}
    stale = committed_units(shard_dir, skip=planned)
    if not stale or embed_cfg.overwrite:
        return []
    if embed_cfg.append:
        if has_manifest(out) and (clean := read_manifest(out).clean) is not None and clean != read_cfg.clean:
            raise StoreConflictError(f"{out}: --append needs the cleaning policy the store was written with "
                                     f"({clean}), got {read_cfg.clean}; give the same cleaning flags, or "
                                     "--overwrite to replace the store")
        kept = []
        for key, marker in stale.items():
            intact = shard_is_done(shard_dir, key)
            if intact is None:
                raise StoreConflictError(f"{out}: unit {key} ({marker.path if marker else 'marker unreadable'}) "
                                         f"is damaged (its {SHARDS}/{key}.* files do not match their marker), so "
                                         "--append cannot keep it; rerun with its input to redo it, or --overwrite")
            kept.append(intact)
        return sorted(kept, key=lambda m: (m.path, m.row_groups or (), m.byte_range or ()))
    paths = {u["path"] for u in units}
    old_paths = sorted({m.path for m in stale.values() if m is not None})
    records = sum(m.rows for m in stale.values() if m is not None)
    other = [p for p in old_paths if p not in paths]
    what = (f"input files not given now: {', '.join(other[:5])}{' ...' if len(other) > 5 else ''}" if other else
            "the same input files, changed since (size or modification time) or read with other settings")
    raise StoreConflictError(f"{out}: the store holds {records} records in {len(stale)} unit(s) that this run would "
                             f"not write ({what}); writing here would delete them. Give --append to keep them and "
                             "add this run's files, --overwrite to replace the store, or a new --out directory")


def _fit_sample(files: list, read_cfg: ReadConfig, fit_split: str | None) -> list[str]:
    """Up to FIT_SAMPLE sequences of ``fit_split`` (``None``: of every split), streamed. Data
    without any split labels is sampled whole; data whose splits do not include ``fit_split``
    is an error (the encoder must never see test rows)."""
    in_split: list[str] = []
    any_split: list[str] = []
    found: set = set()
    for f in files:
        try:
            for batch in iter_file(f, read_cfg, ReadReport(), set()):
                splits = batch.column(SPLIT).to_pylist()
                found.update(splits)
                for s, sp in zip(batch.column(SEQUENCE).to_pylist(), splits):
                    if fit_split is not None and sp == fit_split and len(in_split) < FIT_SAMPLE:
                        in_split.append(s)
                    if len(any_split) < FIT_SAMPLE:
                        any_split.append(s)
                if len(in_split) >= FIT_SAMPLE:
                    return in_split
        except SequenceFormatError as e:
            log.debug("fit sample skips %s: %s", f, e)  # reported when its unit runs
            continue
    if fit_split is not None and not in_split and found - {None}:  # never fit on other (e.g. test) rows
        raise ValueError(f"no records of split {fit_split!r} to fit the encoder on (splits found: "
                         f"{sorted(str(s) for s in found - {None})}); name the training split (--train-split) or hold "
                         "out a test split from unsplit data (--test-fraction)")
    return in_split or any_split


def _resolve_encoder(encoder: Encoder, out: str | Path, files: list, read_cfg: ReadConfig) -> Encoder:
    """Reuse the encoder fitted by an earlier (interrupted) run of this store, else fit it on
    the training split (``read_cfg.train_split``)."""
    requested = encoder.spec()
    saved = read_encoder_record(out)
    if saved is not None:
        if sha256_json(saved.requested) != sha256_json(requested):
            raise StoreConflictError(f"{out}: this store was started with another encoder "
                                     f"({sha256_json(saved.requested)[:16]} vs {sha256_json(requested)[:16]}); "
                                     "use a new output directory, or --overwrite to replace the store")
        return encoder_from_spec(saved.fitted, runs_remote_code(encoder))  # this command's decision
    if getattr(encoder, "needs_fit", False):
        encoder.fit(_fit_sample(files, read_cfg, read_cfg.train_split))  # type: ignore[attr-defined]
    write_encoder_record(out, EncoderRecord(requested=requested, fitted=encoder.spec(),
                                            fit_info=getattr(encoder, "fit_info_", None)))
    return encoder


def embed_sequences(
    inputs: str | Path | Iterable[str | Path],
    out_dir: str | Path,
    encoder: Encoder,
    read_cfg: ReadConfig | None = None,
    embed_cfg: EmbedConfig | None = None,
    use_ray: bool = True,
) -> EmbedReport:
    """Embed sequence files into a store; resumable and idempotent (see the module docstring).

    Args:
        inputs: files, directories or glob patterns (FASTA/FASTQ[.gz], Parquet, CSV/TSV).
        out_dir: store directory (local, ``s3://`` or ``gs://``). Rerunning into the same directory with the same encoder
            skips finished units; a different encoder, or inputs/settings that would drop committed units, are
            refused unless ``embed_cfg.append`` or ``embed_cfg.overwrite`` (see the module docstring).
        encoder: any :class:`~genoray.encoders.Encoder`; one that needs fitting (a
            position-aware k-mer encoder) is fitted on up to 100k sequences of the training
            split (``read_cfg.train_split``).
        read_cfg / embed_cfg: reading/cleaning (and split names) and execution settings.
        use_ray: ``False`` runs the units in this process (same code path, no cluster).
            Either way the embedding processes get :func:`tune_allocator` (glibc malloc
            thresholds), which changes this process's allocator settings when ``False``.

    Returns:
        An :class:`EmbedReport`. Raises :class:`SequenceFormatError` for a bad file when
        ``embed_cfg.on_error == "fail"``, :class:`DuplicateIdError` for ids repeated
        across units and :class:`StoreConflictError` for a store holding other data.
    """
    read_cfg = read_cfg or ReadConfig()
    embed_cfg = embed_cfg or EmbedConfig()
    t0 = time.perf_counter()
    out = fs.as_path(out_dir)
    shard_dir = fs.as_path(fs.join(out, SHARDS))
    fs.makedirs(shard_dir)
    files = expand_inputs(inputs)
    if read_cfg.test_fraction > 0 and not read_cfg.split_cutoffs:  # hold out a stratified test split
        read_cfg = with_split_cutoffs(read_cfg, files)
    if embed_cfg.overwrite:
        fs.delete(fs.join(out, ENCODER_FILE))  # replace: fit the encoder on this run's data
    encoder = _resolve_encoder(encoder, out, files, read_cfg)
    spec, fp = encoder.spec(), fingerprint(encoder)
    units = plan_units(files, fp, read_cfg, embed_cfg.rows_per_unit, embed_cfg.bytes_per_unit)
    kept = _kept_units(out, shard_dir, units, read_cfg, embed_cfg)
    done: dict[str, UnitMarker] = {}
    pending = []
    for u in units:
        d = shard_is_done(shard_dir, u["key"])
        if d is not None:
            done[u["key"]] = d
        else:
            pending.append(u)
    skipped = len(done) + len(kept)
    t1 = time.perf_counter()
    failed: list[UnitFailure] = []
    if pending:
        if use_ray:
            results = run_on_ray(pending, spec, read_cfg, shard_dir, embed_cfg, runs_remote_code(encoder))
        else:
            tune_allocator()
            results = (process_unit(u, encoder, read_cfg, shard_dir, embed_cfg.batch_size,
                                    embed_cfg.read_ahead(gpu=False))
                       for u in pending)
        progress = Progress(f"embed {out}", len(pending))  # a line every 30 s when stderr is no terminal
        for r in results:
            if isinstance(r, UnitMarker):
                progress.update(r.rows)
                done[r.key] = r
            else:
                progress.update(0)
                failed.append(r)
                log.info("unit failed: %s", r.error)  # the report lists it; the CLI prints it once
                if embed_cfg.on_error == "fail":
                    raise SequenceFormatError(r.path, None, r.error)
    t2 = time.perf_counter()
    committed = kept + [done[u["key"]] for u in units if u["key"] in done]
    check_unique_ids(shard_dir, [(d.ids_file, d.file) for d in committed],
                     [f"{d.path} (unit {d.key})" for d in committed], rows=sum(d.rows for d in committed),
                     use_ray=use_ray, digests=[d.ids_sha256 for d in committed])
    status: Literal["complete", "partial"] = "complete" if not failed else "partial"
    rejected: Counter = Counter()
    windows_rejected: Counter = Counter()
    for d in committed:
        rejected.update(d.rejected_by_reason)
        windows_rejected.update(d.windows_rejected_by_reason)
    report = EmbedReport(
        store=str(out), fingerprint=fp, status=status,
        read=sum(d.read for d in committed), accepted=sum(d.accepted for d in committed),
        rejected=rejected, written=sum(d.rows for d in committed), units=len(units) + len(kept), skipped=skipped,
        failed=[{"path": f.path, "error": f.error} for f in failed],
        seconds={"plan": round(t1 - t0, 3), "embed": round(t2 - t1, 3)},
        windowed=sum(d.windowed for d in committed), windows=sum(d.windows for d in committed),
        windows_rejected=windows_rejected,
    )
    if (report.read != report.accepted + sum(rejected.values())
            or report.written != report.accepted - report.windowed + report.windows):
        raise InvariantError(f"record counts do not add up: {report.to_dict()}")
    counts = StoreCounts(read=report.read, accepted=report.accepted, rejected=sum(rejected.values()),
                         written=report.written, rejected_by_reason=dict(sorted(rejected.items())),
                         windowed=report.windowed or None, windows=report.windows if report.windowed else None)
    write_manifest(out, StoreManifest(
        format_version=StoreManifest.FORMAT_VERSION, encoder=spec, fingerprint=fp, dim=encoder.dim, status=status,
        rows=report.written, counts=counts, failed=tuple(f.failed() for f in failed),
        parts=tuple(d.part() for d in committed), clean=read_cfg.clean))
    collect_garbage(shard_dir, {d.key for d in committed})
    report.seconds["total"] = round(time.perf_counter() - t0, 3)
    log.info("embed %s: %s, read %d, accepted %d, rejected %d, written %d; units %d (skipped %d, failed %d); %.1f s",
             out, report.status, report.read, report.accepted, sum(rejected.values()), report.written, report.units,
             report.skipped, len(report.failed), report.seconds["total"])
    return report

