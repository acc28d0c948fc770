"""Compositions of the stages: :func:`train_head` (head + OOD scorer over an index),
:func:`write_bundle` (a loadable, optionally target-adapted bundle version), :func:`reindex`
(the nightly job), :func:`run_quickstart` (the whole method on one labeled file) and
:func:`encoder_from_artifact` (the encoder that made a store, index or bundle)."""

from genoray.pipeline.artifacts import encoder_from_artifact
from genoray.pipeline.publish import write_bundle
from genoray.pipeline.quickstart import run_quickstart
from genoray.pipeline.reindex import ReindexReport, reindex
from genoray.pipeline.train import train_head

__all__ = ["ReindexReport", "encoder_from_artifact", "reindex", "run_quickstart", "train_head", "write_bundle"]
