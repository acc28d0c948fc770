"""Sequence lengths as a variable: the geometric grid of lengths that the OOD scorer and the
head's length calibration are fitted at, and random crops to a length."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def crop(sequences: Sequence[str], length: int, rng: np.random.Generator) -> list[str]:
    """A random window of ``length`` bp from each sequence (shorter ones unchanged)."""
    out = []
    for s in sequences:
        if len(s) <= length:
            out.append(s)
        else:
            i = int(rng.integers(0, len(s) - length + 1))
            out.append(s[i : i + length])
    return out


def length_grid(reference_length: int, min_length: int, ratio: float) -> list[int]:
    """The calibration lengths below ``reference_length``: geometric from ``min_length`` by
    ``ratio``, up to (not including) ``reference_length / sqrt(ratio)``, where the reference
    length itself takes over (:class:`~genoray.config.OODConfig` holds both settings)."""
    g, grid = float(min_length), []
    while g < reference_length / ratio ** 0.5:
        grid.append(int(round(g)))
        g *= ratio
    return sorted(set(grid))
