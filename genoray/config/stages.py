"""Settings of the stages after embedding: index, head, nightly reindex, shift test, evaluation study."""

from __future__ import annotations

from dataclasses import field
from pathlib import Path
from typing import Any, Literal

from genoray.config.base import config_class, parse, validate
from genoray.config.encoding import EmbedConfig


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


OOD_REFERENCE_ROWS = 10_000  # rows whose leave-one-out distances form a head's OOD reference (a constant
# cost per head fit; here, not in genoray.heads, so the capacity plan reads it without importing scikit-learn)


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
            (kNN, linear and trees; mixture chosen by validation log-loss, trees kept only if a
            cross-fitted test on the validation rows shows lower log-loss by > 2 standard errors
            and no lower MCC; otherwise exactly the linear head). trees and auto are opt-in
            (auto is not yet measured on every benchmark cell with that test).
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
        trust_remote_code: let ``hf:`` encoders (local directories) run their own model code.
        max_train: at most this many train rows per dataset (seeded sample; 0 = all).
        max_test: at most this many test rows per dataset (seeded sample; 0 = all).
        cost: ``watts_per_core`` and ``grid_gco2_per_kwh`` of the energy/CO2 estimate.
        heads: fused head modes (``linear``, ``trees``, ``auto``; see :class:`HeadConfig`):
            ``linear`` is the method ``fused``, the others are added as ``fused[trees]`` and
            ``fused[auto]`` (fitted with ``fused``, sharing its work).
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
    trust_remote_code: bool = False
    max_train: int = 0
    max_test: int = 0
    cost: dict[str, float] = field(default_factory=lambda: {"watts_per_core": 10.0, "grid_gco2_per_kwh": 400.0})
    heads: tuple[str, ...] = ("linear",)

    def __post_init__(self) -> None:
        used = set(self.within) | {d for c in self.cross for d in c} | {d for p in self.pooled for d in p}
        missing = used - set(self.datasets)
        validate(self, (not missing, f"datasets used but not defined: {sorted(missing)}"),
                 (self.bootstrap >= 0, f"bootstrap must be >= 0, got {self.bootstrap}"),
                 (self.max_train >= 0 and self.max_test >= 0, "max_train and max_test must be >= 0"),
                 (len(self.heads) >= 1 and len(set(self.heads)) == len(self.heads)
                  and set(self.heads) <= {"linear", "trees", "auto"},
                  f"heads must name head modes (linear, trees, auto), each once, got {list(self.heads)}"),
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
