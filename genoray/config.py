"""Frozen, typed configuration for every stage, in one place.

Configs are plain frozen dataclasses, built at the edge and passed whole to the stage
functions. Each is checked in ``__post_init__`` by one helper, :func:`validate` (``Literal``
fields must hold one of their values, plus the class's own rules), so a bad value fails where
it is made, whichever way it was made:

* Python: ``IndexConfig(target_recall=0.9)``;
* dicts, JSON and YAML: :func:`parse` (pydantic validation over the dataclasses: types are
  checked and coerced, lists become tuples, unknown keys are refused);
* the command line: every flag of ``genoray <stage>`` is generated from these fields by
  :mod:`genoray.flags` (name, type, default, help from the ``Attributes:`` docstring), so each
  default is written once, here.

``to_dict`` gives the JSON form recorded in artifacts (the encoder config is part of the
encoder fingerprint).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")

# pydantic reads this attribute of a dataclass when it validates one: refuse unknown keys
_PYDANTIC_CONFIG = {"extra": "forbid"}


@typing.dataclass_transform(frozen_default=True)
def config_class(cls: type[T]) -> type[T]:
    """``@dataclass(frozen=True)`` plus pydantic's ``extra="forbid"`` (unknown keys refused by :func:`parse`)."""
    cls = dataclass(frozen=True)(cls)
    cls.__pydantic_config__ = _PYDANTIC_CONFIG  # type: ignore[attr-defined]
    return cls


def to_dict(cfg: Any) -> dict[str, Any]:
    """The JSON-able form of a config (nested configs become dicts, tuples stay tuples)."""
    return dataclasses.asdict(cfg)


def parse(cls: type[T], data: Any) -> T:
    """Build a (possibly nested) config dataclass from a dict (JSON/YAML), checking types.

    Raises ``ValueError`` naming the offending keys: ``"<Class>: unknown keys [...]"`` for keys
    that are not fields, else pydantic's message per field (including the class's own
    ``__post_init__`` checks).
    """
    import pydantic

    if isinstance(data, cls):
        return data
    try:
        return pydantic.TypeAdapter(cls).validate_python(data)
    except pydantic.ValidationError as e:
        errors = e.errors()
        unknown = [".".join(map(str, err["loc"])) for err in errors if err["type"] == "unexpected_keyword_argument"]
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown keys {sorted(unknown)}") from None
        parts = []
        for err in errors:
            loc = ".".join(map(str, err["loc"]))
            msg = str(err["ctx"]["error"]) if err["type"] == "value_error" and "ctx" in err else err["msg"]
            parts.append(f"{loc}: {msg}" if loc else msg)
        text = "; ".join(parts)
        raise ValueError(text if text.startswith(cls.__name__ + ":") else f"{cls.__name__}: {text}") from None


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Alias of :func:`parse` (kept for callers of the old name)."""
    return parse(cls, data)


@functools.cache
def _literal_fields(cls: type) -> dict[str, tuple[Any, ...]]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        args = typing.get_args(t) if typing.get_origin(t) is not Literal else (t,)
        lits = [a for a in args if typing.get_origin(a) is Literal]
        if lits:
            allowed = tuple(v for lit in lits for v in typing.get_args(lit))
            out[f.name] = allowed + ((None,) if type(None) in args else ())
    return out


def validate(cfg: Any, *rules: tuple[bool, str]) -> None:
    """The one check of every config, called from ``__post_init__``.

    Every ``Literal[...]`` field must hold one of its values; every ``(ok, message)`` rule
    must hold. Raises ``ValueError("<Class>: <message>")`` on the first failure.
    """
    name = type(cfg).__name__
    for fname, allowed in _literal_fields(type(cfg)).items():  # type: ignore[arg-type]  # a class is hashable
        value = getattr(cfg, fname)
        if value not in allowed:
            shown = " or ".join(repr(a) for a in allowed)
            raise ValueError(f"{name}: {fname} must be {shown}, got {value!r}")
    for ok, message in rules:
        if not ok:
            raise ValueError(f"{name}: {message}")


@config_class
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
        validate(self,
                 (0.0 <= self.max_n_fraction <= 1.0, f"max_n_fraction must be in [0, 1], got {self.max_n_fraction}"),
                 (0 <= self.min_length <= self.max_length,
                  f"need 0 <= min_length <= max_length, got {self.min_length}, {self.max_length}"),
                 (0 <= self.window_overlap < self.max_length,
                  f"need 0 <= window_overlap < max_length, got {self.window_overlap}"))


@config_class
class ReadConfig:
    """Where ids, sequences, labels and domains come from in each input format.

    Attributes:
        id_column / sequence_column / label_column / domain_column / split_column: column names
            for Parquet and CSV/TSV input. ``id_column=None`` picks ``seq_id`` or ``id``.
        label_key / domain_key / split_key: FASTA/FASTQ header tags ``key=value``.
        batch_size: records per Arrow batch.
        clean: the cleaning policy.
        test_fraction: records without a split (no split column or tag) get one: this fraction
            of each label becomes the test split, the rest the train split (stratified, seeded,
            decided per record id; see :mod:`genoray.splits`). 0 leaves them without a split.
        split_seed: seed of that assignment.
        split_names: names of the (train, test) splits it assigns.
        split_cutoffs: per-label hash thresholds of the assignment; filled by
            ``embed_sequences`` from a pass over the input (leave empty).
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
    test_fraction: float = 0.0
    split_seed: int = 0
    split_names: tuple[str, str] = ("train", "test")
    split_cutoffs: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        validate(self, (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
                 (0.0 <= self.test_fraction < 1.0, f"test_fraction must be in [0, 1), got {self.test_fraction}"),
                 (len(set(self.split_names)) == 2, f"split_names must be two different names, got {self.split_names}"))


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
        validate(self,
                 (bool(self.model), "model must name a hub id or a local directory"),
                 (self.tile_nt >= 0 and self.overlap_nt >= 0, "tile_nt and overlap_nt must be >= 0"),
                 (not self.tile_nt or self.overlap_nt < self.tile_nt, "overlap_nt must be smaller than tile_nt"),
                 (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"))


@config_class
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
        validate(self, (min(self.batch_size, self.rows_per_unit, self.bytes_per_unit) >= 1
                        and self.num_actors >= 0 and self.cpus_per_actor >= 0
                        and (self.gpus_per_actor is None or self.gpus_per_actor >= 0),
                        ("batch_size, rows_per_unit and bytes_per_unit must be >= 1; "
                         "num_actors, cpus_per_actor, gpus_per_actor >= 0")))


@config_class
class IndexConfig:
    """Sharded FAISS index over L2-normalised embeddings (inner product = cosine).

    Attributes:
        split: only index rows of this split (``None``, on the command line ``all``: all rows).
        index_type: ``"auto"`` (see :func:`genoray.index.choose_factory`) or a FAISS factory
            string such as ``"Flat"``, ``"IVF1024,Flat"``, ``"IVF4096,PQ32"``, ``"HNSW32"``.
        flat_threshold: below this many vectors ``auto`` builds an exact Flat index.
        memory_budget_mb: ``auto`` stores 8-bit scalar-quantised vectors (IVF-SQ8) if they fit,
            else PQ codes sized to fit.
        shard_size / shards: rows per shard (``shards=0``) or an explicit shard count.
        train_sample: vectors used to train IVF quantizers; ``0`` sizes it from nlist
            (:func:`genoray.plan.train_sample_size`: 64 per centroid, at least 39, at most
            ``train_sample_cap``).
        train_sample_cap: upper bound of the automatic training sample (the 39-per-centroid
            floor wins over it).
        build_memory_mb: memory one build process may use (``0``: this machine's available
            memory); ``build_index`` refuses before any work when the plan does not fit.
        add_cpus: CPUs each Ray add task asks for (fractional, so adds pack onto nodes).
        refine_k_factor_max: PQ indexes re-rank up to ``k x`` this many candidates from stored
            vectors; the build fails when the recall target is not reached within it.
        target_recall: recall@10 that nprobe / efSearch are tuned to reach.
        recall_queries: queries for measuring recall against exact search.
        use_gpu: train on GPU when FAISS sees one (checked at run time; CPU otherwise).
        seed: sampling seed.
    """

    split: str | None = field(default="train", metadata={"none": ("all",), "none_help": "every row"})
    index_type: str = "auto"
    flat_threshold: int = 100_000
    memory_budget_mb: int = 4096
    shard_size: int = 2_000_000
    shards: int = 0
    train_sample: int = 0
    train_sample_cap: int = 1_000_000
    build_memory_mb: int = 0
    add_cpus: float = 0.5
    refine_k_factor_max: int = 16
    target_recall: float = 0.95
    recall_queries: int = 500
    use_gpu: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        validate(self,
                 (bool(self.index_type), "index_type must be 'auto' or a FAISS factory string"),
                 (min(self.memory_budget_mb, self.shard_size, self.recall_queries, self.train_sample_cap,
                      self.refine_k_factor_max) >= 1
                  and self.flat_threshold >= 0 and self.shards >= 0 and self.train_sample >= 0
                  and self.build_memory_mb >= 0 and self.add_cpus > 0,
                  ("memory_budget_mb, shard_size, recall_queries, train_sample_cap, refine_k_factor_max must be >= 1; "
                   "flat_threshold, shards, train_sample (0: sized from nlist), build_memory_mb >= 0; add_cpus > 0")),
                 (0.0 < self.target_recall <= 1.0, f"target_recall must be in (0, 1], got {self.target_recall}"))


@config_class
class HeadConfig:
    """The fused head: kNN vote + logistic regression + gradient-boosted trees.

    Attributes:
        k: neighbours in the vote.
        temperature: softmax temperature over similarities in the vote.
        C: inverse L2 strength of the logistic regression; ``None`` chooses it from
            (0.01, 0.1, 1) on the validation split.
        val_fraction: part of the training split held out to choose the fusion weight and
            to calibrate the fused probabilities (temperature or isotonic, by cross-fitted log-loss).
        seed: split seed.
        head: parts the fused head may mix with the kNN vote: linear (the logistic regression;
            the default, the measured head of the README), trees (gradient-boosted trees) or auto
            (kNN, linear and trees; mixture chosen by validation log-loss). trees and auto are
            opt-in: auto lost 0.076 MCC to linear on E. coli sigma with the kmer encoder.
        max_rows: training rows the head fit uses at most (a seeded, class-stratified sample),
            which bounds its time and memory on large stores.
    """

    k: int = 10
    temperature: float = 0.05
    C: float | None = None
    val_fraction: float = 0.2
    seed: int = 0
    head: Literal["linear", "trees", "auto"] = "linear"
    max_rows: int = 100_000

    def __post_init__(self) -> None:
        validate(self,
                 (self.k >= 1, f"k must be >= 1, got {self.k}"),
                 (self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
                 (self.C is None or self.C > 0, f"C must be > 0 (or None: chosen on the validation split), got {self.C}"),
                 (0.0 < self.val_fraction < 1.0, f"val_fraction must be in (0, 1), got {self.val_fraction}"),
                 (self.max_rows >= 2, f"max_rows must be >= 2, got {self.max_rows}"))


@config_class
class ReindexConfig:
    """Gate and build settings of the nightly reindex (:mod:`genoray.reindex`).

    Attributes:
        recall_floor: minimum recall@10 of the new index against exact search.
        max_accuracy_drop: largest allowed drop of held-out fused accuracy vs the current bundle.
        eval_split: held-out split used by the gate.
        keep_versions: published versions kept by garbage collection (plus CURRENT and leased).
        incremental: add new rows to the current index as a delta when the drift rules allow.
        shift_alpha: significance level of the shift test that forces a retrain.
        index / head / embed: the settings of the index, head and embedding stages.
    """

    recall_floor: float = 0.9
    max_accuracy_drop: float = 0.02
    eval_split: str = "test"
    keep_versions: int = 3
    incremental: bool = True
    shift_alpha: float = 0.05
    index: IndexConfig = field(default_factory=IndexConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)

    def __post_init__(self) -> None:
        validate(self, (self.max_accuracy_drop >= 0, f"max_accuracy_drop must be >= 0, got {self.max_accuracy_drop}"),
                 (self.keep_versions >= 1, f"keep_versions must be >= 1, got {self.keep_versions}"),
                 (0.0 < self.shift_alpha < 1.0, f"shift_alpha must be in (0, 1), got {self.shift_alpha}"))


@config_class
class ShiftConfig:
    """Settings of the distribution-shift tests (:mod:`genoray.shift`).

    Attributes:
        max_samples: rows per side (seeded subsample).
        pca_dim: PCA dimensions the MMD test runs on.
        n_permutations: permutations of the MMD test.
        k: the k-th nearest reference row defines a row's OOD distance.
        ood_quantile: quantile of the reference rows' own distances used as OOD threshold.
        alpha: significance level (Bonferroni-corrected over the three tests).
        seed: sampling seed.
    """

    max_samples: int = 1000
    pca_dim: int = 32
    n_permutations: int = 300
    k: int = 10
    ood_quantile: float = 0.95
    alpha: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        validate(self, (min(self.max_samples, self.pca_dim, self.n_permutations, self.k) >= 1,
                        "max_samples, pca_dim, n_permutations and k must be >= 1"),
                 (0.0 < self.ood_quantile < 1.0, f"ood_quantile must be in (0, 1), got {self.ood_quantile}"),
                 (0.0 < self.alpha < 1.0, f"alpha must be in (0, 1), got {self.alpha}"))


@config_class
class ServiceLimits:
    """Request limits of the HTTP API (:mod:`genoray.service`).

    Attributes:
        max_body_bytes: largest request body (413 beyond).
        max_sequences: sequences per request.
        max_length: longest sequence (bp) accepted in a request.
        max_total_bases: sum of sequence lengths per request.
        max_k: most neighbours a request may ask for.
        rate_per_key: requests/s per API key and ingress replica (token bucket; 429 beyond); 0 = off.
        burst_per_key: token-bucket burst per key.
    """

    max_body_bytes: int = 1 << 20
    max_sequences: int = 64
    max_length: int = 10_000
    max_total_bases: int = 200_000
    max_k: int = 100
    rate_per_key: float = 0.0
    burst_per_key: int = 20

    def __post_init__(self) -> None:
        validate(self, (min(self.max_body_bytes, self.max_sequences, self.max_length, self.max_total_bases,
                            self.max_k, self.burst_per_key) >= 1, "every limit must be >= 1"),
                 (self.rate_per_key >= 0, f"rate_per_key must be >= 0, got {self.rate_per_key}"))


@config_class
class ServeConfig:
    """Service settings (CLI: ``genoray serve --help``; see :mod:`genoray.serve`).

    Attributes:
        root: bundle root (the directory holding ``CURRENT`` and ``versions/``).
        host / port: HTTP bind address (loopback unless you put a TLS proxy in front).
        require_key: refuse requests without a valid ``Authorization: Bearer`` key.
        key_hashes: sha256 digests of the accepted keys (default: from ``GENORAY_API_KEYS``).
        min_replicas / max_replicas / target_ongoing_requests: autoscaling of the replicas that
            hold a bundle (``GenorayModel``; ``GenorayReplica`` with ``ingress="haproxy"``)
            (run >= 2 replicas in production: a request on a replica that dies is retried on another).
        max_ongoing_requests: per model replica; >= max_batch_size so batches can fill.
        max_queued_requests: per caller queue bound; beyond it the answer is 503.
        request_timeout_s: end-to-end timeout at the proxy (408).
        predict_timeout_s: the ingress waits this long for a prediction, retries included (504);
            keep it below ``request_timeout_s`` so callers get the more specific answer.
        retries: attempts on another model replica after the one serving a request died.
        max_batch_size / batch_wait_timeout_s: dynamic batching.
        poll_s: how often replicas check ``CURRENT``.
        num_cpus: logical CPUs per model replica (fractional on small hosts).
        upscale_delay_s / downscale_delay_s: autoscaling delays.
        ingress_replicas / ingress_num_cpus / ingress_max_ongoing_requests: the HTTP ingress
            (auth and validation only; light). ``ingress="proxy"`` only.
        health_check_period_s: Serve calls ``check_health`` this often (fails if the bundle
            watcher stopped, so the replica is replaced).
        graceful_shutdown_timeout_s: on scale-down or shutdown a replica finishes its in-flight
            requests for up to this long.
        access_log: Serve's per-request access log lines (proxy and replicas); off saves a log
            write per hop per request (one A/B on 2 cores: 110 -> 131 req/s at 8 clients; within
            run-to-run noise in bench_serve).
        ingress: ``"proxy"`` (Serve's Python proxy -> ingress -> model replicas) or ``"haproxy"``
            (HAProxy -> API-and-model replicas; see :mod:`genoray.serve`). ``"haproxy"`` needs
            ``genoray.serve.haproxy_env()`` in the environment of the Ray processes.
        limits: request limits (:class:`ServiceLimits`; a dict of its fields is accepted).
    """

    root: str
    host: str = "127.0.0.1"
    port: int = 8000
    require_key: bool = True
    key_hashes: tuple[str, ...] = ()
    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 16
    max_ongoing_requests: int = 64
    max_queued_requests: int = 256
    request_timeout_s: float = 15.0
    predict_timeout_s: float = 10.0
    retries: int = 3
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.005
    poll_s: float = 2.0
    num_cpus: float = 0.5
    upscale_delay_s: float = 5.0
    downscale_delay_s: float = 60.0
    ingress_replicas: int = 1
    ingress_num_cpus: float = 0.1
    ingress_max_ongoing_requests: int = 256
    health_check_period_s: float = 5.0
    graceful_shutdown_timeout_s: float = 20.0
    access_log: bool = True
    ingress: Literal["proxy", "haproxy"] = "proxy"
    limits: ServiceLimits = field(default_factory=ServiceLimits)

    def __post_init__(self) -> None:
        if isinstance(self.limits, dict):  # ServeConfig(limits={"rate_per_key": 2}) as before
            object.__setattr__(self, "limits", ServiceLimits(**self.limits))
        if isinstance(self.key_hashes, list):
            object.__setattr__(self, "key_hashes", tuple(self.key_hashes))
        validate(self,
                 (0 <= self.port <= 65535, f"port must be in 0..65535, got {self.port}"),
                 (0 <= self.min_replicas <= self.max_replicas and self.max_replicas >= 1,
                  f"need 0 <= min_replicas <= max_replicas >= 1, got {self.min_replicas}, {self.max_replicas}"),
                 (min(self.max_ongoing_requests, self.max_queued_requests, self.max_batch_size,
                      self.ingress_replicas, self.ingress_max_ongoing_requests) >= 1,
                  ("max_ongoing_requests, max_queued_requests, max_batch_size, ingress_replicas and "
                   "ingress_max_ongoing_requests must be >= 1")),
                 (min(self.request_timeout_s, self.predict_timeout_s, self.poll_s, self.health_check_period_s) > 0,
                  "request_timeout_s, predict_timeout_s, poll_s and health_check_period_s must be > 0"),
                 (self.retries >= 0 and self.batch_wait_timeout_s >= 0 and self.num_cpus >= 0
                  and self.ingress_num_cpus >= 0 and self.graceful_shutdown_timeout_s >= 0,
                  "retries, batch_wait_timeout_s, num_cpus, ingress_num_cpus, graceful_shutdown_timeout_s must be >= 0"),
                 (isinstance(self.limits, ServiceLimits), "limits must be a ServiceLimits"))


@config_class
class Study:
    """A study of methods x datasets x protocols (:mod:`genoray.evaluate`; YAML: :func:`load_study`).

    Attributes:
        name: the report's title.
        datasets: name -> labeled file (relative paths in YAML are relative to the YAML file).
        encoders: genoray encoder names.
        within: datasets evaluated train split -> test split of themselves.
        cross: (A, B) pairs: train split of A -> test split of B (same label set).
        pooled: groups: union of train splits -> each test split.
        bootstrap: resamples for the 95% confidence intervals.
        seed: seed of every method and the bootstrap.
        lora: settings of a LoRA fine-tune for ``hf:`` encoders (``r``, ``epochs``, ``max_steps``).
        cost: ``watts_per_core`` and ``grid_gco2_per_kwh`` of the energy/CO2 estimate.
    """

    name: str
    datasets: dict[str, str]
    encoders: tuple[str, ...] = ("kmer",)
    within: tuple[str, ...] = ()
    cross: tuple[tuple[str, str], ...] = ()
    pooled: tuple[tuple[str, ...], ...] = ()
    bootstrap: int = 200
    seed: int = 0
    lora: dict[str, Any] | None = None
    cost: dict[str, float] = field(default_factory=lambda: {"watts_per_core": 10.0, "grid_gco2_per_kwh": 400.0})

    def __post_init__(self) -> None:
        used = set(self.within) | {d for c in self.cross for d in c} | {d for p in self.pooled for d in p}
        missing = used - set(self.datasets)
        validate(self, (not missing, f"datasets used but not defined: {sorted(missing)}"),
                 (self.bootstrap >= 0, f"bootstrap must be >= 0, got {self.bootstrap}"),
                 (set(self.cost) >= {"watts_per_core", "grid_gco2_per_kwh"},
                  "cost needs watts_per_core and grid_gco2_per_kwh"))


def load_study(path: str | Path) -> Study:
    """Read a study YAML file (see ``examples/study.yaml``); dataset paths are resolved
    relative to the file. Errors name the file."""
    import yaml

    path = Path(path)
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: a study is a YAML mapping")  # noqa: TRY004 (bad input, not a bad call)
    if isinstance(doc.get("datasets"), dict):
        doc["datasets"] = {k: str(v if Path(v).is_absolute() else (path.parent / v).resolve())
                           for k, v in doc["datasets"].items()}
    try:
        return parse(Study, doc)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
