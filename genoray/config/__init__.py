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

Modules: :mod:`.base` (the machinery), :mod:`.reading`, :mod:`.encoding`, :mod:`.stages` and
:mod:`.serving`; every name is importable from ``genoray.config``.
"""

from genoray.config.base import T, config_class, from_dict, parse, to_dict, validate
from genoray.config.encoding import EmbedConfig, HFConfig, KmerConfig, PositionConfig
from genoray.config.reading import CleanPolicy, ReadConfig
from genoray.config.serving import ServeConfig, ServiceLimits
from genoray.config.stages import HeadConfig, IndexConfig, ReindexConfig, ShiftConfig, Study, load_study

__all__ = [
    "CleanPolicy", "EmbedConfig", "HFConfig", "HeadConfig", "IndexConfig", "KmerConfig", "PositionConfig",
    "ReadConfig", "ReindexConfig", "ServeConfig", "ServiceLimits", "ShiftConfig", "Study", "T", "config_class",
    "from_dict", "load_study", "parse", "to_dict", "validate",
]
