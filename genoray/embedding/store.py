"""The embedding store: its format (``store.json``, ``encoder.json``, the row schema) and its reader.

Layout of a store directory (local, ``s3://`` or ``gs://``)::

    store.json                 StoreManifest: format_version, encoder spec + fingerprint, dim,
                               status ("complete" | "partial"), counts, failed files, and parts
                               (file, rows, sha256, source file, rejects table)
    encoder.json               EncoderRecord: the encoder as requested and as fitted (reused on resume)
    shards/<key>.parquet       rows of :func:`embedding_schema` (see :mod:`.shards` for the unit files)

``store.json`` is written last (atomically), and readers use it, never a glob; each part's
sha256 is verified before it is read. On object storage (see :mod:`genoray.infra.fs`) a unit's
files are uploaded before its done marker and ``store.json`` after every marker, so what a
reader can see is always complete, and a remote part is read from the very bytes whose sha256
was checked (:func:`genoray.infra.pinned.verified_local`). ``verified.json`` (local stores; a node-local cache record
for remote ones) holds size, mtime and sha256 of each part when it was last verified, so an
unchanged part is not hashed again on every open.

Store rows are records without their sequence (:mod:`genoray.sequences.records`) plus the
sha1 of the cleaned sequence and the embedding: ``seq_id, label, domain, split, seq_hash,
embedding: fixed_size_list<float32>[dim]``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genoray.config import CleanPolicy, ReadConfig
from genoray.infra import fs
from genoray.infra.artifacts import verify_files
from genoray.infra.documents import read_document, record, write_document
from genoray.infra.names import safe_join
from genoray.infra.pinned import verified_local
from genoray.sequences import iter_sequences
from genoray.sequences.records import DOMAIN, LABEL, META, SEQ_ID, SEQUENCE, SPLIT

log = logging.getLogger(__name__)
MANIFEST = "store.json"
VERIFIED = "verified.json"  # size, mtime and sha256 of each part when it was last verified
ENCODER_FILE = "encoder.json"
SEQ_HASH = "seq_hash"
EMBEDDING = "embedding"
__all__ = ["DOMAIN", "EMBEDDING", "LABEL", "SEQ_HASH", "SEQ_ID", "SPLIT", "EmbeddingStore", "Embeddings",
           "EncoderRecord", "FailedUnit", "StoreCounts", "StoreManifest", "StorePart", "embedding_schema",
           "has_manifest", "read_manifest", "vectors_of", "write_manifest"]


def embedding_schema(dim: int) -> pa.Schema:
    """Arrow schema of store rows with ``dim``-float embeddings."""
    return pa.schema(
        [
            pa.field(SEQ_ID, pa.string(), nullable=False),
            pa.field(LABEL, pa.string()),
            pa.field(DOMAIN, pa.string()),
            pa.field(SPLIT, pa.string()),
            pa.field(SEQ_HASH, pa.string()),
            pa.field(EMBEDDING, pa.list_(pa.float32(), dim), nullable=False),
        ]
    )


@record
class StorePart:
    """One committed unit's shard in ``store.json``: its file (relative to the store), rows,
    sha256, the source file it was read from (with its row groups or byte range), its
    rejects table (``None``: no record rejected) and its rows per split name (``split_rows``;
    rows without a split are not listed; ``None`` in stores of an older genoray: count them)."""

    file: str
    rows: int
    sha256: str
    source: str
    row_groups: tuple[int, ...] | None = None
    byte_range: tuple[int, int] | None = None
    rejects: str | None = None
    split_rows: dict[str, int] | None = None

    def rows_in(self, split: str | None) -> int | None:
        """Rows of ``split`` (all rows when ``None``) as recorded when the part was written;
        ``None`` when the store does not record it (then count them)."""
        if split is None:
            return self.rows
        return None if self.split_rows is None else self.split_rows.get(split, 0)


@record
class FailedUnit:
    """An input unit whose file could not be parsed: the file and why."""

    path: str
    error: str


@record
class StoreCounts:
    """Records read, accepted, rejected (by reason) and rows written (``windowed`` long records
    became ``windows`` rows): ``read == accepted + rejected``, ``written == accepted - windowed + windows``."""

    read: int
    accepted: int
    rejected: int
    written: int
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    windowed: int | None = None
    windows: int | None = None


@record
class StoreManifest:
    """``store.json``: what a store holds and how it was made.

    Attributes:
        format_version: :attr:`FORMAT_VERSION`.
        encoder / fingerprint / dim: the fitted encoder's spec, its fingerprint and vector size.
        status: ``"complete"`` or ``"partial"`` (some units failed; see ``failed``).
        rows: rows over all parts.
        counts: :class:`StoreCounts`.
        failed: the units whose file could not be parsed.
        parts: the committed units' shards, in input order.
        clean: the :class:`~genoray.config.CleanPolicy` the records were cleaned with; ``None``
            in stores written before it was recorded (readers then assume the default).
    """

    KIND: ClassVar[str] = "embedding store manifest"
    FORMAT_VERSION: ClassVar[int] = 2
    format_version: int
    encoder: dict[str, Any]
    fingerprint: str
    dim: int
    status: Literal["complete", "partial"]
    rows: int
    counts: StoreCounts
    failed: tuple[FailedUnit, ...] = ()
    parts: tuple[StorePart, ...] = ()
    clean: CleanPolicy | None = None


@record
class EncoderRecord:
    """``encoder.json``: the encoder a store was started with (``requested``) and as fitted on
    its training split (``fitted``, what every vector was made with), and what the fit saw."""

    requested: dict[str, Any]
    fitted: dict[str, Any]
    fit_info: dict[str, Any] | None = None


def read_manifest(path: str | Path) -> StoreManifest:
    """The manifest of the store at ``path`` (checks the format, not the files)."""
    mpath = fs.join(path, MANIFEST)
    if not fs.is_file(mpath):
        raise FileNotFoundError(f"{path}: not an embedding store (no {MANIFEST})")
    return read_document(StoreManifest, mpath)


def write_manifest(out: str | Path, manifest: StoreManifest) -> None:
    """Write ``store.json`` (last, atomically): it lists exactly the committed units' shards."""
    write_document(fs.join(out, MANIFEST), manifest)


def has_manifest(path: str | Path) -> bool:
    """Whether ``path`` holds a committed store (its ``store.json`` exists)."""
    return fs.is_file(fs.join(path, MANIFEST))


def read_encoder_record(path: str | Path) -> EncoderRecord | None:
    """``encoder.json`` of a store (``None`` before its first run fitted an encoder)."""
    p = fs.join(path, ENCODER_FILE)
    return read_document(EncoderRecord, p) if fs.is_file(p) else None


def write_encoder_record(path: str | Path, rec: EncoderRecord) -> None:
    """Write ``encoder.json`` of a store."""
    write_document(fs.join(path, ENCODER_FILE), rec)


@dataclass
class Embeddings:
    """In-memory slice of a store: ids, labels, domains, splits and the float32 matrix."""

    ids: np.ndarray
    labels: np.ndarray
    domains: np.ndarray
    splits: np.ndarray
    vectors: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def vectors_of(table: pa.Table, dim: int) -> np.ndarray:
    """The embedding column of a store table as a float32 ``(n, dim)`` matrix."""
    emb = table[EMBEDDING].combine_chunks()
    return emb.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)


class EmbeddingStore:
    """A committed, verified embedding store (see the module docstring). ``path`` is a local
    directory or an ``s3://`` / ``gs://`` prefix (then ``path`` stays a string and parts are
    streamed from the object store; their verification record is kept in the node-local cache)."""

    def __init__(self, path: str | Path, verify: bool = True):
        self.path: Any = fs.as_path(path)
        self.manifest = read_manifest(self.path)
        self.hashed = 0
        if verify:
            self.verify()

    def verify(self, run: Callable[[Callable, list[tuple]], list] | None = None) -> int:
        """Check every part's sha256 (:func:`~genoray.infra.artifacts.verify_files`): parts
        unchanged (size, mtime) since their last verification are not hashed again; ``run(fn,
        calls)`` hashes the others (e.g. as parallel Ray tasks on the nodes that read them;
        default: here). Raises :class:`~genoray.infra.errors.ChecksumError` naming a bad part;
        returns the number of parts hashed."""
        record_file = fs.cache_dir("stores", self.path) / VERIFIED if fs.is_remote(self.path) \
            else Path(self.path) / VERIFIED
        record_file.parent.mkdir(parents=True, exist_ok=True)
        self.hashed = verify_files(self.path, {p.file: p.sha256 for p in self.manifest.parts}, record=record_file,
                                   run=run)
        return self.hashed

    @property
    def dim(self) -> int:
        """Vector size."""
        return int(self.manifest.dim)

    @property
    def encoder_spec(self) -> dict[str, Any]:
        """The fitted encoder's spec (:func:`genoray.encoders.encoder_from_spec` rebuilds it)."""
        return self.manifest.encoder

    @property
    def fingerprint(self) -> str:
        """The encoder fingerprint every vector was made with."""
        return self.manifest.fingerprint

    @property
    def rows(self) -> int:
        """Rows over all parts."""
        return int(self.manifest.rows)

    @property
    def clean_policy(self) -> CleanPolicy | None:
        """The cleaning the records went through; ``None`` for a store written before it was
        recorded (logged once per store: consumers then clean with the default policy)."""
        if self.manifest.clean is None:
            log.warning("%s: store records no CleanPolicy (written by an older genoray); "
                        "queries will be cleaned with the default policy", self.path)
        return self.manifest.clean

    def source_records(self, ids) -> dict[str, tuple[str, str | None]] | None:
        """``{seq_id: (sequence, meta JSON)}`` for the wanted ``ids``, re-read (streamed) from the
        store's source files with the reading settings it was embedded with; ``None`` when a
        source file is gone."""
        sources = sorted({p.source for p in self.manifest.parts if p.source})
        if not sources or not all(fs.is_file(s) for s in sources):
            return None
        clean = self.manifest.clean
        wanted = {str(i) for i in ids}
        found: dict[str, tuple[str, str | None]] = {}
        for batch in iter_sequences(sources, ReadConfig(clean=clean) if clean is not None else None):
            for sid, seq, meta in zip(batch[SEQ_ID].to_pylist(), batch[SEQUENCE].to_pylist(), batch[META].to_pylist()):
                if sid in wanted:
                    found[sid] = (seq, meta)
        return found

    def sequences(self, ids) -> list[str] | None:
        """The cleaned sequences of rows ``ids`` (in that order), re-read from the source files;
        ``None`` when a source is gone or lacks one of the ids."""
        records = self.source_records(ids)
        if records is None:
            return None
        found = [records[str(i)][0] for i in ids if str(i) in records]
        return found if len(found) == len(ids) else None

    def iter_tables(self, columns: list[str] | None = None):
        """Stream the parts one at a time (bounded memory)."""
        for p in self.manifest.parts:  # a remote part: read once, the bytes read are the bytes verified
            with verified_local(safe_join(self.path, p.file, self.path), p.sha256) as part:
                yield fs.read_table(part, columns=columns)

    def iter_batches(self, columns: list[str], rows: int = 16_384):
        """The store's rows as tables of at most ``rows`` rows (parts were verified when the
        store was opened), so reading never holds a whole part's embeddings."""
        for p in self.manifest.parts:
            with verified_local(safe_join(self.path, p.file, self.path), p.sha256) as part:
                for batch in fs.iter_batches(part, columns, rows):
                    yield pa.Table.from_batches([batch])

    def table(self, split: str | None = None) -> pa.Table:
        """Rows (of one split, or all) as one Arrow table."""
        parts = [t if split is None else t.filter(pc.equal(t[SPLIT], split)) for t in self.iter_tables()]
        return pa.concat_tables(parts) if parts else embedding_schema(self.dim).empty_table()

    def load(self, split: str | None = None) -> Embeddings:
        """Load rows (of one split, or all) into memory."""
        t = self.table(split)

        def col(name: str) -> np.ndarray:
            return np.array(t[name].to_pylist(), dtype=object)

        return Embeddings(col(SEQ_ID), col(LABEL), col(DOMAIN), col(SPLIT), vectors_of(t, self.dim))
