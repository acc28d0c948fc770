"""Settings of the evaluation side: scoring a head on a held-out split (:class:`EvaluateConfig`),
the distribution-shift tests (:class:`ShiftConfig`, :class:`ShiftSelection`) and studies of
methods x datasets x protocols (:class:`Study`, :func:`load_study`)."""

from __future__ import annotations

from dataclasses import field
from pathlib import Path
from typing import Any, Literal

from genoray.config.base import config_class, parse, validate
from genoray.config.reading import ALL, TEST


@config_class
class EvaluateConfig:
    """Scoring a trained head on a held-out split of a store (``genoray evaluate STORE``).

    Attributes:
        split: the split scored (``None``, on the command line ``all``: every row; a row in
            the index never votes for itself).
        bootstrap: resamples for the 95% confidence intervals (0: none).
        seed: bootstrap and sampling seed.
        max_test_rows: rows of the split scored at most: a seeded, class-stratified sample read
            in two streamed passes (every row when the split has no more), so time and memory
            stay bounded on a large split; the report states the sample's size and a Wilson 95%
            interval of its accuracy (bootstrap intervals for the other metrics).
    """

    split: str | None = field(default=TEST, metadata=ALL)
    bootstrap: int = 200
    seed: int = 0
    max_test_rows: int = 20_000

    def __post_init__(self) -> None:
        validate(self, (self.bootstrap >= 0, f"bootstrap must be >= 0, got {self.bootstrap}"),
                 (self.max_test_rows >= 1, f"max_test_rows must be >= 1, got {self.max_test_rows}"))


@config_class
class ShiftConfig:
    """Settings of the distribution-shift tests (:mod:`genoray.evaluation.shift`).

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
class ShiftSelection:
    """Which rows of two stores ``genoray shift`` compares, and how it breaks the OOD share down.

    Attributes:
        reference_split: split of the reference store (``None``, on the command line ``all``: every row).
        new_split: split of the new store (``None``/``all``: every row).
        group_by: break the OOD fraction down by this column of the new store.
    """

    reference_split: str | None = field(default=None, metadata=ALL)
    new_split: str | None = field(default=None, metadata=ALL)
    group_by: Literal["label", "domain", "none"] = "none"

    def __post_init__(self) -> None:
        validate(self)


@config_class
class Study:
    """A study of methods x datasets x protocols (:mod:`genoray.evaluation.study`; YAML: :func:`load_study`).

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
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:  # bad input: exit 2, not a bug
        raise ValueError(f"{path}: not valid YAML: {' '.join(str(e).split())}; fix the file (see "
                         "examples/study.yaml)") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: a study is a YAML mapping")  # noqa: TRY004 (bad input, not a bad call)
    if isinstance(doc.get("datasets"), dict):
        doc["datasets"] = {k: str(v if Path(v).is_absolute() else (path.parent / v).resolve())
                           for k, v in doc["datasets"].items()}
    try:
        return parse(Study, doc)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
