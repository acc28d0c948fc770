"""Held-out splits for data that has none: stratified by label, seeded, decided per record.

``ReadConfig(test_fraction=F)`` gives every record without a split (no split column or header
tag) one: exactly ``round(F * n)`` records of each label (at least one and at most ``n - 1``
when a label has two or more) become ``split_names[1]`` ("test"), the rest ``split_names[0]``
("train"), like scikit-learn's stratified ``train_test_split``. Which records: those with the
smallest ``blake2b(seed, id)`` hash within their label. :func:`fit_cutoffs` finds, in one pass
over the input (:func:`genoray.sequences.reader.with_split_cutoffs`), the per-label hash threshold; the reader then decides each record from its id
and label alone (:func:`assign`), so the split is the same in every unit, on every worker and
on every rerun, and is written into the store's ``split`` column like a split read from the data.
A windowed record's windows share the record's split.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from typing import Any

from genoray.config import ReadConfig


def split_hash(seq_id: str, seed: int) -> float:
    """A uniform number in [0, 1) from the record id and the seed."""
    digest = hashlib.blake2b(f"{seed}\x00{seq_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _key(label: Any) -> str:
    return "" if label is None else str(label)


def fit_cutoffs(records: Iterable[tuple[str, Any]], fraction: float, seed: int) -> tuple[tuple[str, float], ...]:
    """Per-label hash thresholds so that exactly ``round(fraction * n)`` records of each label
    (clamped to 1 .. n-1 when n >= 2) hash at or below it. ``records``: ``(id, label)`` pairs."""
    by_label: dict[str, list[float]] = {}
    for seq_id, label in records:
        by_label.setdefault(_key(label), []).append(split_hash(seq_id, seed))
    out = []
    for label, hashes in sorted(by_label.items()):
        n = len(hashes)
        k = round(fraction * n)
        if n >= 2:
            k = min(max(k, 1), n - 1)
        else:
            k = 0
        out.append((label, sorted(hashes)[k - 1] if k else -1.0))
    return tuple(out)


@functools.lru_cache(maxsize=8)
def _table(cutoffs: tuple[tuple[str, float], ...]) -> dict[str, float]:
    return dict(cutoffs)


def assign(seq_id: str, label: Any, read_cfg: ReadConfig) -> str:
    """The split of a record without one under ``read_cfg`` (``split_cutoffs``, ``split_seed``,
    ``split_names``; see the module docstring)."""
    cut = _table(read_cfg.split_cutoffs).get(_key(label), -1.0)
    train, test = read_cfg.split_names
    return test if split_hash(seq_id, read_cfg.split_seed) <= cut else train
