"""``write_bundle``: an index and a head made into a bundle version that every replica can
load, optionally adapted to a target's class priors; :func:`genoray.bundle.publish` then makes
it ``CURRENT``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from genoray.bundle import write_version
from genoray.bundle.manifest import HEAD_DIR, INDEX_DIR
from genoray.config import PublishConfig
from genoray.predict import Predictor


def write_bundle(root: str | os.PathLike, index_dir: str | os.PathLike, head_dir: str | os.PathLike,
                 cfg: PublishConfig | None = None, metrics: dict[str, Any] | None = None,
                 version: str | None = None, target: list[str] | None = None,
                 shard_groups: list[list[int]] | None = None, trust_remote_code: bool = False) -> str:
    """Write a new version of ``root`` from an index and a head; returns its name (not
    published). It is loaded with the code every replica uses before it is sealed, so a version
    a replica could not load is never written (the index memory-mapped, as ``serve --mmap``
    loads it: the check holds no copy of it in this process's memory). ``target``: unlabeled sequences of the data the
    bundle will serve; their estimated class priors (and the decision whether to re-weight,
    :mod:`genoray.scoring.priors`) go into ``head/priors.json`` and every replica applies them.
    ``cfg``: the shard groups (:class:`~genoray.config.PublishConfig`); ``shard_groups``:
    explicit groups instead. ``trust_remote_code``: the command's decision to run the index's
    transformers model's own code for these load checks (the index's recorded value never does)."""
    cfg = cfg or PublishConfig()

    def prepare(stage: Path) -> None:
        # the index memory-mapped (as a serving replica maps it): this process holds mapped
        # pages of the page cache, not an anonymous copy of the whole index
        if target is not None:
            Predictor.load(stage / INDEX_DIR, stage / HEAD_DIR, mmap=True, trust_remote_code=trust_remote_code).adapt_to(
                list(target)).save(stage / HEAD_DIR)
        # refuse what replicas could not load
        Predictor.load(stage / INDEX_DIR, stage / HEAD_DIR, mmap=True, trust_remote_code=trust_remote_code)

    return write_version(root, index_dir, head_dir, metrics, version,
                         shard_groups=shard_groups if shard_groups is not None else cfg.shard_groups,
                         group_memory_mb=cfg.group_memory_mb, prepare=prepare)
