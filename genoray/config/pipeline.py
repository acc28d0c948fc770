"""Settings of the composed jobs: the nightly reindex (:class:`ReindexConfig`)."""

from __future__ import annotations

from dataclasses import field

from genoray.config.base import config_class, validate
from genoray.config.encoding import EmbedConfig
from genoray.config.heads import HeadConfig
from genoray.config.index import IndexConfig
from genoray.config.reading import TEST


@config_class
class ReindexConfig:
    """Gate and build settings of the nightly reindex (:mod:`genoray.pipeline.reindex`).

    Attributes:
        recall_floor: minimum recall@10 of the new index against exact search.
        max_accuracy_drop: largest allowed drop of held-out fused accuracy vs the current bundle.
        eval_split: held-out split used by the gate.
        keep_versions: published versions kept by garbage collection (plus CURRENT and leased).
        incremental: add new rows to the current index as a delta when the drift rules allow.
        shift_alpha: significance level of the shift test that forces a retrain.
        head_refit_fraction: on an incremental night whose new rows are at most this fraction
            of the current index's rows, carry the current bundle's head over instead of
            refitting it, when it was fitted with the same head settings and the new rows bring
            no class it lacks; the new rows still vote through the index, and the gate scores
            the new bundle (new index, carried head) against the current one as on any night.
            A night then costs its delta, not a head fit. ``0``: refit every night.
        index / head / embed: the settings of the index, head and embedding stages.
    """

    recall_floor: float = 0.9
    max_accuracy_drop: float = 0.02
    eval_split: str = TEST
    keep_versions: int = 3
    incremental: bool = True
    shift_alpha: float = 0.05
    head_refit_fraction: float = 0.05
    index: IndexConfig = field(default_factory=IndexConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)

    def __post_init__(self) -> None:
        validate(self, (self.max_accuracy_drop >= 0, f"max_accuracy_drop must be >= 0, got {self.max_accuracy_drop}"),
                 (self.keep_versions >= 1, f"keep_versions must be >= 1, got {self.keep_versions}"),
                 (0.0 < self.shift_alpha < 1.0, f"shift_alpha must be in (0, 1), got {self.shift_alpha}"),
                 (0.0 <= self.head_refit_fraction <= 1.0,
                  f"head_refit_fraction must be in [0, 1], got {self.head_refit_fraction}"))

