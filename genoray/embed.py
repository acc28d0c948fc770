"""``embed_sequences``: read sequence files, embed them on a Ray actor pool, write a store.

Ray Data runs the encoder in an actor pool (one encoder load per actor; fractional CPUs on
CPU-only hosts so reads still get scheduled on small machines; one GPU per actor when the
cluster has GPUs and the encoder is a transformers model). The driver streams results back
with ``iter_batches`` and appends them to the store, which is committed atomically with its
counts: ``read == accepted + rejected`` and ``written == accepted``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from genoray import schema
from genoray.config import EmbedConfig, ReadConfig
from genoray.encoders import Encoder, encoder_from_spec, fingerprint
from genoray.sequences import ReadReport, read_sequences
from genoray.store import EmbeddingStore, StoreWriter

log = logging.getLogger(__name__)


def init_ray(num_cpus: int | None = None, object_store_mb: int = 512) -> None:
    """Start a local Ray (no dashboard, capped object store) unless one is already running
    or ``RAY_ADDRESS`` points at a cluster."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local, single-user session
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        object_store_memory=object_store_mb * 2**20,
        log_to_driver=False,
        _temp_dir=tempfile.mkdtemp(prefix="gr-ray-"),
    )
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = bool(os.environ.get("GENORAY_PROGRESS"))


class EmbedBatch:
    """Ray Data callable class: builds the encoder once per actor and embeds Arrow batches."""

    def __init__(self, encoder_spec: dict[str, Any]):
        self.encoder = encoder_from_spec(encoder_spec)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return embed_table(self.encoder, batch)


def embed_table(encoder: Encoder, batch: pa.Table) -> pa.Table:
    """Embed one Arrow table of records; returns store rows (no sequence column)."""
    seqs = batch[schema.SEQUENCE].to_pylist()
    vecs = np.ascontiguousarray(encoder.embed(seqs), dtype=np.float32)
    hashes = [hashlib.sha1(s.encode()).hexdigest() for s in seqs]
    emb = pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), vecs.shape[1])
    return pa.table({
        schema.SEQ_ID: batch[schema.SEQ_ID],
        schema.LABEL: batch[schema.LABEL],
        schema.DOMAIN: batch[schema.DOMAIN],
        schema.SPLIT: batch[schema.SPLIT],
        schema.SEQ_HASH: pa.array(hashes, pa.string()),
        schema.EMBEDDING: emb,
    })


@dataclass
class EmbedReport:
    """What one embedding run did; ``read == written + rejected`` is checked before commit."""

    store: str
    fingerprint: str
    read: ReadReport
    written: int
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = self.read.to_dict()
        d.update(store=self.store, fingerprint=self.fingerprint, written=self.written, seconds=self.seconds)
        total = self.seconds.get("embed", 0.0)
        d["sequences_per_s"] = round(self.written / total, 1) if total > 0 else None
        return d


def _fit_encoder(encoder: Encoder, table: pa.Table, fit_split: str | None) -> Encoder:
    if not getattr(encoder, "needs_fit", False):
        return encoder
    seqs = table
    if fit_split is not None and fit_split in set(table[schema.SPLIT].to_pylist()):
        seqs = table.filter(pa.compute.equal(table[schema.SPLIT], fit_split))
    return encoder.fit(seqs[schema.SEQUENCE].to_pylist())


def embed_sequences(
    inputs: str | Path | Iterable[str | Path],
    out_dir: str | Path,
    encoder: Encoder,
    read_cfg: ReadConfig | None = None,
    embed_cfg: EmbedConfig | None = None,
    fit_split: str | None = "train",
    use_ray: bool = True,
) -> EmbedReport:
    """Read, clean, embed and store sequences.

    Args:
        inputs: sequence files (see :func:`genoray.sequences.iter_sequences`).
        out_dir: new store directory (must not exist or be empty).
        encoder: any :class:`~genoray.encoders.Encoder`; a position-aware k-mer encoder that
            is not yet fitted is fitted on the ``fit_split`` rows (all rows if absent).
        read_cfg / embed_cfg: reading/cleaning and Ray execution settings.
        use_ray: ``False`` embeds in this process (same code, no cluster), for small inputs
            and for comparisons.

    Returns:
        An :class:`EmbedReport` with counts and stage timings.
    """
    embed_cfg = embed_cfg or EmbedConfig()
    t0 = time.perf_counter()
    table, report = read_sequences(inputs, read_cfg)
    t_read = time.perf_counter() - t0
    encoder = _fit_encoder(encoder, table, fit_split)
    spec, fp = encoder.spec(), fingerprint(encoder)
    writer = StoreWriter(out_dir, spec, fp, encoder.dim)
    t1 = time.perf_counter()
    try:
        if use_ray and table.num_rows:
            for out in _ray_embed(table, spec, encoder, embed_cfg):
                writer.write(out)
        else:
            for start in range(0, table.num_rows, embed_cfg.batch_size):
                writer.write(embed_table(encoder, table.slice(start, embed_cfg.batch_size)))
        t_embed = time.perf_counter() - t1
        if writer.rows != report.accepted:
            raise RuntimeError(f"embedded {writer.rows} rows but {report.accepted} were accepted")
        counts = report.to_dict()
        counts["written"] = writer.rows
        store = writer.commit(counts)
    except BaseException:
        writer.abort()
        raise
    return EmbedReport(str(store.path), fp, report, writer.rows, {"read": round(t_read, 3), "embed": round(t_embed, 3)})


def _ray_embed(table: pa.Table, spec: dict[str, Any], encoder: Encoder, cfg: EmbedConfig):
    import ray
    import ray.data

    init_ray()
    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 1.0), resources.get("GPU", 0.0)
    use_gpu = spec["type"] == "hf" and gpus > 0
    num_gpus = cfg.gpus_per_actor if cfg.gpus_per_actor is not None else (1.0 if use_gpu else 0.0)
    if cfg.num_actors:
        n_actors = cfg.num_actors
    elif num_gpus:
        n_actors = max(1, int(gpus / num_gpus))
    else:
        n_actors = max(1, int(cpus) - 1) if cpus > 2 else max(1, int(cpus))
    blocks = [pa.Table.from_batches([b]) for b in table.to_batches(max_chunksize=cfg.batch_size)] or [table]
    n_actors = max(1, min(n_actors, len(blocks)))
    ds = ray.data.from_arrow(blocks)
    ds = ds.map_batches(
        EmbedBatch,
        fn_constructor_kwargs={"encoder_spec": spec},
        batch_format="pyarrow",
        batch_size=cfg.batch_size,
        compute=ray.data.ActorPoolStrategy(size=n_actors),
        num_cpus=cfg.cpus_per_actor,
        num_gpus=num_gpus,
    )
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        yield batch
