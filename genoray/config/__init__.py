"""Frozen, typed configuration for every stage, in one place.

Configs are plain frozen dataclasses (:func:`config_class`, the same record type as every
artifact document), built at the edge and passed whole to the stage functions. Each is checked
in ``__post_init__`` by one helper, :func:`validate` (``Literal`` fields must hold one of their
values, plus the class's own rules), so a bad value fails where it is made, whichever way it
was made:

* Python: ``IndexConfig(target_recall=0.9)``;
* dicts, JSON and YAML: :func:`parse` (pydantic validation over the dataclasses: types are
  checked and coerced, lists become tuples, unknown keys are refused);
* the command line: every flag of ``genoray <command>`` is generated from these fields by
  :mod:`genoray.cli.flags` (name, type, default, help from the ``Attributes:`` docstring), so
  each default is written once, here.

``to_dict`` gives the JSON form recorded in artifacts (the encoder config is part of the
encoder fingerprint).

Modules, in the order of the pipeline: :mod:`.reading` (cleaning, columns, split names),
:mod:`.encoding` (encoders, the embedding job), :mod:`.index` (index, capacity plan),
:mod:`.heads` (fused head, OOD scorer), :mod:`.serving` (batch prediction, publishing, the HTTP
service), :mod:`.evaluation` (evaluate, shift, studies), :mod:`.pipeline` (the nightly reindex);
:mod:`.base` is the machinery. Every name is importable from ``genoray.config``.
"""

from genoray.config.base import T, config_class, parse, to_dict, validate
from genoray.config.encoding import EmbedConfig, EncoderChoice, HFConfig, KmerConfig, PositionConfig, RemoteCodeConfig
from genoray.config.evaluation import EvaluateConfig, ShiftConfig, ShiftSelection, Study, load_study
from genoray.config.heads import HeadConfig, OODConfig, TargetConfig
from genoray.config.index import ClusterSpec, IndexConfig, PlanConfig
from genoray.config.pipeline import ReindexConfig
from genoray.config.reading import ALL, TEST, TRAIN, CleanPolicy, ReadConfig
from genoray.config.serving import PredictConfig, PublishConfig, ServeConfig, ServiceLimits

__all__ = [
    "ALL", "TEST", "TRAIN", "CleanPolicy", "ClusterSpec", "EmbedConfig", "EncoderChoice", "EvaluateConfig",
    "HFConfig", "HeadConfig", "IndexConfig", "KmerConfig", "OODConfig", "PlanConfig", "PositionConfig",
    "PredictConfig", "PublishConfig", "ReadConfig", "ReindexConfig", "RemoteCodeConfig", "ServeConfig", "ServiceLimits", "ShiftConfig",
    "ShiftSelection", "Study", "T", "TargetConfig", "config_class", "load_study", "parse", "to_dict", "validate",
]
