"""Encoder and embedding-job settings: which encoder (:class:`EncoderChoice`), the k-mer,
positional and transformers encoders, and the embedding job (:class:`EmbedConfig`)."""

from __future__ import annotations

from typing import Literal

from genoray.config.base import config_class, validate


@config_class
class EncoderChoice:
    """Which encoder embeds the sequences (:func:`genoray.encoders.encoder_from_name`).

    Attributes:
        encoder: ``kmer`` (k-mer spectrum + GC + z-curve), ``kmer-pos`` (adds position-aware
            features for fixed-window tasks), ``hf:<hub id or local model dir>``, or
            ``hf:<model>+kmer`` / ``hf:<model>+kmer-pos`` (the model's vector joined with the
            k-mer one); ``genoray quickstart`` also takes ``both`` (kmer and kmer-pos side by side).
    """

    encoder: str = "kmer"

    def __post_init__(self) -> None:
        name = self.encoder
        validate(self, (name in ("kmer", "kmer-pos", "both", "hf") or (name.startswith("hf:") and len(name) > 3),
                        f"unknown encoder {name!r}: use kmer, kmer-pos, hf:<model id or directory> (optionally "
                        "+kmer or +kmer-pos), both (quickstart) or hf (plan: any transformers model)"))


@config_class
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
        validate(self,
                 (self.window >= 0 and self.bin_size >= 0 and self.max_bins >= 1,
                  "window, bin_size must be >= 0 and max_bins >= 1"),
                 (bool(self.ks) and all(1 <= k <= 4 for k in self.ks), f"position ks must be in 1..4, got {self.ks}"),
                 (self.weight >= 0 and self.min_signal_bits >= 0, "weight and min_signal_bits must be >= 0"))


@config_class
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
        validate(self, (bool(self.ks) and all(1 <= k <= 8 for k in self.ks), f"k-mer sizes must be in 1..8, got {self.ks}"))


@config_class
class RemoteCodeConfig:
    """Whether a command that loads an artifact (``genoray train``) may run the artifact's
    transformers model's own Python code.

    Attributes:
        trust_remote_code: the operator's decision on this command (a warning names the model);
            the value an artifact recorded never switches it on.
    """

    trust_remote_code: bool = False


@config_class
class HFConfig:
    """A frozen Hugging Face model used as encoder.

    Attributes:
        model: hub id (``org/name``) or a local directory made by ``save_pretrained``.
        revision: hub revision (commit) to pin; ignored for local directories.
        trust_remote_code: run the model's own Python code (``--trust-remote-code`` on the
            command that builds the encoder; a warning names the model and its files). Only for
            a local directory or an ``org/name`` hub id pinned to a ``revision``; never on by
            default. A value recorded in an artifact (store, index, head, bundle) is never used
            to switch it on: the command that loads the artifact decides
            (:class:`RemoteCodeConfig`, ``ServeConfig.trust_remote_code``).
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
        tokens_per_batch: ``> 0`` forms forward batches by a token budget over length-sorted
            tiles (``rows x longest tile <= budget``) instead of ``batch_size`` rows: short
            tiles go in big batches, long ones in small ones, padding stays minimal.
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
    tokens_per_batch: int = 0

    def __post_init__(self) -> None:
        validate(self,
                 (bool(self.model), "model must name a hub id or a local directory"),
                 (self.tile_nt >= 0 and self.overlap_nt >= 0, "tile_nt and overlap_nt must be >= 0"),
                 (not self.tile_nt or self.overlap_nt < self.tile_nt, "overlap_nt must be smaller than tile_nt"),
                 (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"))


@config_class
class EmbedConfig:
    """Execution of the embedding job (see :mod:`genoray.embedding.job`).

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
        allow_cpu: run a transformers encoder on CPU actors when the Ray cluster has no GPU
            (otherwise the job refuses with a clear message: it would be ~100x slower).
        max_actors: elastic actor pool: start with ``num_actors`` (or the default) and grow to
            this many as nodes/GPUs join (``0`` = a fixed pool).
        prefetch_batches: read and clean up to this many batches ahead on a thread while the
            encoder runs (``0`` = read, then embed, one after the other). ``None``: 2 on actors
            that get a GPU (the forward leaves the CPU free to read ahead), 0 on CPU-only actors
            and in-process (measured there at x0.80 of the plain loop on 2 cores: the extra
            thread competes with the encoder's; docs/benchmarks.md).
        append: into a store that holds units this run would not write (other input files, or
            the same files changed or read with other settings), keep them and add this run's
            (same encoder and cleaning policy). Without append or overwrite such a run is refused;
            rerunning the same job (or adding files to it) always resumes.
        overwrite: replace such a store: its encoder is fitted again and the units this run
            does not write are deleted once it has committed.
    """

    batch_size: int = 1024
    rows_per_unit: int = 200_000
    bytes_per_unit: int = 256 * 2**20
    num_actors: int = 0
    cpus_per_actor: float = 0.0
    gpus_per_actor: float | None = None
    on_error: Literal["continue", "fail"] = "continue"
    allow_cpu: bool = False
    max_actors: int = 0
    prefetch_batches: int | None = None
    append: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        validate(self, (min(self.batch_size, self.rows_per_unit, self.bytes_per_unit) >= 1
                        and self.num_actors >= 0 and self.cpus_per_actor >= 0
                        and (self.gpus_per_actor is None or self.gpus_per_actor >= 0),
                        ("batch_size, rows_per_unit and bytes_per_unit must be >= 1; "
                         "num_actors, cpus_per_actor, gpus_per_actor >= 0")),
                 (not (self.append and self.overwrite), "append and overwrite exclude each other; give one"),
                 (self.prefetch_batches is None or self.prefetch_batches >= 0, "prefetch_batches must be >= 0"))

    def read_ahead(self, gpu: bool) -> int:
        """Batches to read ahead on an actor that gets a GPU (``gpu``) or not: ``prefetch_batches``,
        or its default (2 with a GPU, 0 without)."""
        return self.prefetch_batches if self.prefetch_batches is not None else (2 if gpu else 0)
