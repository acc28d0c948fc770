"""Index and capacity settings: :class:`IndexConfig`, the cluster a plan is made for
(:class:`ClusterSpec`) and the plan command's own settings (:class:`PlanConfig`)."""

from __future__ import annotations

from dataclasses import field
from typing import ClassVar

from genoray.config.base import config_class, validate
from genoray.config.reading import ALL, TRAIN


@config_class
class IndexConfig:
    """Sharded FAISS index over L2-normalised embeddings (inner product = cosine).

    Attributes:
        split: only index rows of this split (``None``, on the command line ``all``: all rows).
        index_type: ``"auto"`` (see :func:`genoray.index.choose_factory`) or a FAISS factory
            string such as ``"Flat"``, ``"IVF1024,Flat"``, ``"IVF4096,PQ32"``, ``"HNSW32"``.
        flat_threshold: below this many vectors ``auto`` builds an exact Flat index.
        memory_budget_mb: memory for all the index's codes (n x bytes per vector); ``auto``
            stores 8-bit scalar-quantised vectors (IVF-SQ8) if they fit, else PQ codes sized to
            fit. The same default in ``genoray index`` and ``genoray plan``, so both choose the
            same index type for the same input.
        shard_size / shards: rows per shard (``shards=0``) or an explicit shard count.
        train_sample: vectors used to train IVF quantizers; ``0`` sizes it from nlist
            (:func:`genoray.index.core.train_sample_size`: 64 per centroid, at least 39, at most
            ``train_sample_cap``).
        train_sample_cap: upper bound of the automatic training sample (the 39-per-centroid
            floor wins over it).
        build_memory_mb: memory one build process may use (``0``: on Ray the smallest node's
            memory, otherwise this machine's available memory); ``build_index`` refuses before
            any work when the plan does not fit.
        add_cpus: CPUs each Ray add task asks for (fractional, so adds pack onto nodes).
        refine_k_factor_max: PQ indexes re-rank up to ``k x`` this many candidates from stored
            vectors; the build fails when the recall target is not reached within it.
        target_recall: recall@10 that nprobe / efSearch are tuned to reach.
        recall_queries: queries for measuring recall against exact search.
        use_gpu: train on GPU when FAISS sees one (checked at run time; CPU otherwise).
        seed: sampling seed.
        overwrite: replace an index in the output directory made from another store or with other
            settings (without it such a run is refused and the old index kept; the same store and
            settings resume an interrupted build).
    """

    RERUN_IGNORES: ClassVar[tuple[str, ...]] = ("overwrite", "add_cpus", "build_memory_mb", "use_gpu")

    split: str | None = field(default=TRAIN, metadata=ALL)
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
    overwrite: bool = False

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
class ClusterSpec:
    """The cluster a capacity plan is made for (:mod:`genoray.index.capacity`).

    Attributes:
        nodes: worker nodes.
        memory_per_node_mb: memory of each node in MB (MiB, like every memory setting; 0: this machine's
            available memory).
        cpus_per_node: CPUs of each node (0: this machine's cores).
        gpus_per_node: GPUs of each node.
        gflops_per_core: sgemm rate of one core, GFLOP/s (the default was measured on a 2-core
            x86-64 machine with faiss-cpu's AVX-512 kernels, idle).
    """

    nodes: int = 1
    memory_per_node_mb: float = 0.0
    cpus_per_node: int = 0
    gpus_per_node: int = 0
    gflops_per_core: float = 25.0

    def __post_init__(self) -> None:
        validate(self, (self.nodes >= 1, f"nodes must be >= 1, got {self.nodes}"),
                 (min(self.memory_per_node_mb, self.cpus_per_node, self.gpus_per_node) >= 0
                  and self.gflops_per_core > 0,
                  "memory_per_node_mb, cpus_per_node, gpus_per_node must be >= 0 and gflops_per_core > 0"))


@config_class
class PlanConfig:
    """What ``genoray plan`` plans for, besides the index settings.

    Attributes:
        n: vectors (``0`` with a store: its rows of the index split).
        dim: embedding dimension (``0`` with a store: its dimension).
        embed_rate: measured sequences/s per node (``0``: the plan's rate for the encoder).
        probe_fraction: share of an IVF index's lists one recall-tuned search scans (``nprobe /
            nlist``), at which the plan prices every search: the build's and the reindex's recall
            tuning, the head fit (then bounded by ``fit_scan_rows``), prediction and serving. ``0``:
            with ``--index``, that index's tuned ``nprobe``; otherwise ``nlist / 256``, at least 8
            (tuned on clustered k-mer spectra: the best case). Unclustered (isotropic) vectors need
            far more (1/2 at 250k x 64 and 3/8 at 1M, ``bench/bench_growth.py``); the worst case is ``1``.
        cluster: the nodes (:class:`ClusterSpec`).
    """

    n: int = 0
    dim: int = 0
    embed_rate: float = 0.0
    probe_fraction: float = 0.0
    cluster: ClusterSpec = field(default_factory=ClusterSpec)

    def __post_init__(self) -> None:
        validate(self, (min(self.n, self.dim, self.embed_rate) >= 0, "n, dim and embed_rate must be >= 0"),
                 (0 <= self.probe_fraction <= 1, f"probe_fraction must be in [0, 1], got {self.probe_fraction}"))
