"""Frozen, typed configuration for each stage.

Configs are plain frozen dataclasses, built at the edge (CLI flags, job arguments) and passed
whole to the stage functions. ``to_dict``/``from_dict`` give a JSON form that is recorded in
artifacts (for example the encoder config is part of the encoder fingerprint).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

T = TypeVar("T")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a (possibly nested) config dataclass from a dict, refusing unknown keys."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {sorted(unknown)}")
    kwargs = {}
    for key, value in data.items():
        ftype = names[key].type
        nested = _NESTED.get((cls.__name__, key))
        if nested is not None and isinstance(value, dict):
            value = from_dict(nested, value)
        elif isinstance(value, list) and "tuple" in str(ftype):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


@dataclass(frozen=True)
class CleanPolicy:
    """How raw sequences are cleaned; every rejection is counted with its reason.

    Attributes:
        uppercase: upper-case the sequence (lower-case soft-masking is otherwise rejected).
        rna_to_dna: translate U to T.
        ambiguous: ``"to_n"`` maps IUPAC ambiguity codes (R Y S W K M B D H V) to N;
            ``"reject"`` rejects records that contain them.
        strip_gaps: remove alignment gaps ``-`` and ``.`` instead of rejecting the record.
        max_n_fraction: reject records whose fraction of N exceeds this.
        min_length / max_length: reject records outside this length range (after cleaning).
        long_records: what happens to a record longer than ``max_length``: ``"reject"`` (reason
            ``too_long``) or ``"window"``: cut it into ``max_length``-bp windows overlapping by
            ``window_overlap`` (the last one aligned to the record's end), each a row with id
            ``<id>:<start>-<end>`` (1-based, inclusive) and ``source_id``/``start``/``end`` in its
            metadata (coordinates of the record as read). Each window is cleaned and checked on
            its own (alphabet, N fraction), so one bad region loses its windows, not the record.
            FASTA files are then streamed line by line, so a long record is never held whole.
            Use it for chromosomes and assemblies.
        window_overlap: bases shared by consecutive windows.
        duplicate_ids: ``"reject"`` rejects a repeated id within one read; ``"error"`` raises.
    """

    uppercase: bool = True
    rna_to_dna: bool = True
    ambiguous: Literal["to_n", "reject"] = "to_n"
    strip_gaps: bool = False
    max_n_fraction: float = 0.1
    min_length: int = 1
    max_length: int = 1_000_000
    long_records: Literal["reject", "window"] = "reject"
    window_overlap: int = 0
    duplicate_ids: Literal["reject", "error"] = "reject"

    def __post_init__(self) -> None:
        if self.ambiguous not in ("to_n", "reject"):
            raise ValueError(f"ambiguous must be 'to_n' or 'reject', got {self.ambiguous!r}")
        if not 0.0 <= self.max_n_fraction <= 1.0:
            raise ValueError(f"max_n_fraction must be in [0, 1], got {self.max_n_fraction}")
        if not 0 <= self.min_length <= self.max_length:
            raise ValueError(f"need 0 <= min_length <= max_length, got {self.min_length}, {self.max_length}")
        if self.long_records not in ("reject", "window"):
            raise ValueError(f"long_records must be 'reject' or 'window', got {self.long_records!r}")
        if not 0 <= self.window_overlap < self.max_length:
            raise ValueError(f"need 0 <= window_overlap < max_length, got {self.window_overlap}")
        if self.duplicate_ids not in ("reject", "error"):
            raise ValueError(f"duplicate_ids must be 'reject' or 'error', got {self.duplicate_ids!r}")


@dataclass(frozen=True)
class ReadConfig:
    """Where ids, sequences, labels and domains come from in each input format.

    Attributes:
        id_column / sequence_column / label_column / domain_column / split_column: column names
            for Parquet and CSV/TSV input. ``id_column=None`` picks ``seq_id`` or ``id``.
        label_key / domain_key / split_key: FASTA/FASTQ header tags ``key=value``.
        batch_size: records per Arrow batch.
        clean: the cleaning policy.
    """

    id_column: str | None = None
    sequence_column: str = "sequence"
    label_column: str | None = "label"
    domain_column: str | None = "domain"
    split_column: str | None = "split"
    label_key: str = "label"
    domain_key: str = "domain"
    split_key: str = "split"
    batch_size: int = 8192
    clean: CleanPolicy = field(default_factory=CleanPolicy)


@dataclass(frozen=True)
class PositionConfig:
    """Position-aware features for fixed-window tasks (see :mod:`genoray.encoders.kmer`).

    Attributes:
        window: window length in bp; ``0`` means "fit it": the most common sequence length
            in the corpus passed to ``KmerEncoder.fit``.
        ks: k-mer sizes whose occurrence is recorded per position bin (1 = one-hot).
        bin_size: positions per bin; ``0`` chooses ``ceil(window / max_bins)``.
        max_bins: upper bound on bins when ``bin_size`` is 0.
        weight: weight of the positional block relative to the spectrum blocks.
        length_policy: ``"crop_pad"`` centre-crops longer and centre-pads (with N) shorter
            sequences to the window; ``"error"`` refuses any sequence whose length differs.
        enable: ``"auto"`` keeps the block only when ``fit`` finds position-specific base
            composition in the (unlabeled) corpus: the largest per-position KL divergence of
            base frequencies from the overall composition must exceed ``min_signal_bits`` and
            10x its sampling-noise level. Windows not aligned on any site (e.g. enhancer
            tiles) then get the position-free encoder. ``"always"`` keeps it regardless.
        min_signal_bits: threshold of the ``auto`` test, in bits.
    """

    window: int = 0
    ks: tuple[int, ...] = (1, 2)
    bin_size: int = 0
    max_bins: int = 64
    weight: float = 2.0
    length_policy: Literal["crop_pad", "error"] = "crop_pad"
    enable: Literal["auto", "always"] = "auto"
    min_signal_bits: float = 0.02

    def __post_init__(self) -> None:
        if self.enable not in ("auto", "always"):
            raise ValueError(f"enable must be 'auto' or 'always', got {self.enable!r}")
        if self.window < 0 or self.bin_size < 0 or self.max_bins < 1:
            raise ValueError("window, bin_size must be >= 0 and max_bins >= 1")
        if not self.ks or any(k < 1 or k > 4 for k in self.ks):
            raise ValueError(f"position ks must be in 1..4, got {self.ks}")
        if self.length_policy not in ("crop_pad", "error"):
            raise ValueError(f"length_policy must be 'crop_pad' or 'error', got {self.length_policy!r}")


@dataclass(frozen=True)
class KmerConfig:
    """The weightless default encoder: k-mer spectra + GC + z-curve (+ optional position block).

    Attributes:
        ks: k-mer sizes of the (position-free) spectrum; each k gives one L2-normalised block.
        canonical: merge each k-mer with its reverse complement (strand-agnostic tasks).
        gc: add GC content.
        zcurve: add the 9 phase-specific z-curve components.
        position: position-aware block; ``None`` for a position-free encoder.
    """

    ks: tuple[int, ...] = (1, 2, 3, 4)
    canonical: bool = False
    gc: bool = True
    zcurve: bool = True
    position: PositionConfig | None = None

    def __post_init__(self) -> None:
        if not self.ks or any(k < 1 or k > 8 for k in self.ks):
            raise ValueError(f"k-mer sizes must be in 1..8, got {self.ks}")


@dataclass(frozen=True)
class HFConfig:
    """A frozen Hugging Face model used as encoder.

    Attributes:
        model: hub id (``org/name``) or a local directory made by ``save_pretrained``.
        revision: hub revision (commit) to pin; ignored for local directories.
        trust_remote_code: run the model's own Python code. Only honoured for a local
            directory or when the user names the model explicitly; never on by default.
        pooling: ``"mean"`` (attention-mask aware) or ``"cls"``.
        tile_nt / overlap_nt: tile sequences longer than ``tile_nt`` bp with this overlap;
            tile embeddings are averaged weighted by tile length. ``tile_nt=0`` derives it
            from the model's maximum context (one token per bp assumed, conservative).
        reverse_complement: average the embedding with that of the reverse complement.
        batch_size: sequences (tiles) per forward pass; batches are formed by length bucket.
        dtype: ``"auto"`` uses bfloat16/float16 on GPU and float32 on CPU.
        device: ``"auto"`` picks CUDA when available.
        layer: hidden layer to pool (``-1`` = last).
        local_files_only: never contact a hub.
    """

    model: str
    revision: str | None = None
    trust_remote_code: bool = False
    pooling: Literal["mean", "cls"] = "mean"
    tile_nt: int = 0
    overlap_nt: int = 32
    reverse_complement: bool = False
    batch_size: int = 32
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    device: str = "auto"
    layer: int = -1
    local_files_only: bool = False

    def __post_init__(self) -> None:
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {self.pooling!r}")
        if self.tile_nt and self.overlap_nt >= self.tile_nt:
            raise ValueError("overlap_nt must be smaller than tile_nt")


@dataclass(frozen=True)
class EmbedConfig:
    """Execution of the embedding job (see :mod:`genoray.embed`).

    Attributes:
        batch_size: records per encoder call.
        rows_per_unit: Parquet files are split into units of about this many rows (row groups).
        bytes_per_unit: uncompressed FASTA files larger than this are split into byte ranges
            cut at record headers (one unit each); gzip and FASTQ files are one unit each (gzip
            cannot be entered in the middle; a FASTQ quality line may start with ``@``).
        num_actors: encoder actors (one model load each); ``0`` = one per GPU when the encoder
            uses GPUs, else one per CPU.
        cpus_per_actor: ``0`` = ``(cluster CPUs - 1) / actors`` capped at 1, so actors never
            hold every CPU (which deadlocks the pipeline on small hosts).
        gpus_per_actor: ``None`` = 1 for transformers encoders on a cluster with GPUs, else 0.
        on_error: ``"continue"`` commits the good units and reports failed files
            (``status="partial"``); ``"fail"`` raises on the first bad file.
    """

    batch_size: int = 1024
    rows_per_unit: int = 200_000
    bytes_per_unit: int = 256 * 2**20
    num_actors: int = 0
    cpus_per_actor: float = 0.0
    gpus_per_actor: float | None = None
    on_error: Literal["continue", "fail"] = "continue"

    def __post_init__(self) -> None:
        if self.on_error not in ("continue", "fail"):
            raise ValueError(f"on_error must be 'continue' or 'fail', got {self.on_error!r}")
        if (self.batch_size < 1 or self.rows_per_unit < 1 or self.bytes_per_unit < 1 or self.num_actors < 0
                or self.cpus_per_actor < 0):
            raise ValueError("batch_size, rows_per_unit and bytes_per_unit must be >= 1; "
                             "num_actors, cpus_per_actor >= 0")


@dataclass(frozen=True)
class IndexConfig:
    """Sharded FAISS index over L2-normalised embeddings (inner product = cosine).

    Attributes:
        split: only index rows of this split (``None`` = all rows).
        index_type: ``"auto"`` (see :func:`genoray.index.choose_factory`) or a FAISS factory
            string such as ``"Flat"``, ``"IVF1024,Flat"``, ``"IVF4096,PQ32"``, ``"HNSW32"``.
        flat_threshold: below this many vectors ``auto`` builds an exact Flat index.
        memory_budget_mb: ``auto`` stores 8-bit scalar-quantised vectors (IVF-SQ8) if they fit,
            else PQ codes sized to fit.
        shard_size / shards: rows per shard (``shards=0``) or an explicit shard count.
        train_sample: vectors used to train IVF quantizers.
        target_recall: recall@10 that nprobe / efSearch are tuned to reach.
        recall_queries: queries for measuring recall against exact search.
        use_gpu: train on GPU when FAISS sees one (checked at run time; CPU otherwise).
        seed: sampling seed.
    """

    split: str | None = "train"
    index_type: str = "auto"
    flat_threshold: int = 100_000
    memory_budget_mb: int = 4096
    shard_size: int = 2_000_000
    shards: int = 0
    train_sample: int = 100_000
    target_recall: float = 0.95
    recall_queries: int = 500
    use_gpu: bool = True
    seed: int = 0


@dataclass(frozen=True)
class HeadConfig:
    """The fused head: kNN vote + logistic regression + gradient-boosted trees.

    Attributes:
        k: neighbours in the vote.
        temperature: softmax temperature over similarities in the vote.
        C: inverse L2 strength of the logistic regression; ``None`` chooses it from
            (0.01, 0.1, 1) on the validation split.
        val_fraction: part of the training split held out to choose the fusion weight and
            to calibrate the fused probabilities (temperature scaling).
        seed: split seed.
        head: parts the fused head may mix: ``"linear"`` (kNN + linear), ``"trees"`` (kNN +
            gradient-boosted trees) or ``"auto"`` (all three; chosen by validation log-loss).
        max_rows: training rows the head fit uses at most (a seeded, class-stratified sample),
            which bounds its time and memory on large stores.
    """

    k: int = 10
    temperature: float = 0.05
    C: float | None = None
    val_fraction: float = 0.2
    seed: int = 0
    head: str = "auto"
    max_rows: int = 100_000


_NESTED: dict[tuple[str, str], type] = {
    ("ReadConfig", "clean"): CleanPolicy,
    ("KmerConfig", "position"): PositionConfig,
}
