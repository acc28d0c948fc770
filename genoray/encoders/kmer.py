"""The weightless default encoder: k-mer spectra, GC content, z-curve and (optionally) a
position-aware block, all computed with vectorised numpy.

Vector layout (each block in this order; ``dim`` is their sum):

* for each ``k`` in ``ks``: k-mer frequencies (``4**k`` columns in lexicographic order of
  ``ACGT``; fewer with ``canonical``), scaled to unit L2 norm. k-mers containing N are skipped.
* ``gc``: (G+C) / (A+C+G+T), 1 column.
* ``zcurve``: for codon phase p = 0, 1, 2 (position i with i % 3 == p) the z-curve components
  x = (A+G-C-T)/n_p, y = (A+C-G-T)/n_p, z = (A+T-G-C)/n_p, 9 columns.
* ``position`` (optional): each sequence is centre-cropped/padded to the fitted window; for
  each k in ``position.ks`` the k-mer starting at each position is counted in its position
  bin (``bin_size`` bp), giving ``n_bins * 4**k`` columns per k, each k-block scaled to L2
  norm ``position.weight``. With k=1 and bin_size=1 this is the one-hot encoding of the window.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from genoray.config import KmerConfig, PositionConfig, parse, to_dict
from genoray.encoders.base import fingerprint

log = logging.getLogger(__name__)

VERSION = 1
_CODE = np.full(256, 4, dtype=np.uint8)
for _i, _c in enumerate(b"ACGT"):
    _CODE[_c] = _i


def encode_batch(sequences: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate sequences into one uint8 code array (A0 C1 G2 T3 N4) plus their lengths."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    joined = "".join(sequences).encode("ascii")
    return _CODE[np.frombuffer(joined, dtype=np.uint8)], lengths


def kmer_indices(codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For every start position i of a flat code array, the k-mer index (base 4, first base
    most significant) and whether the k bases are all A/C/G/T. Arrays have ``len(codes)-k+1``."""
    m = codes.shape[-1] - k + 1
    if m <= 0:
        shape = codes.shape[:-1] + (0,)
        return np.zeros(shape, np.int64), np.zeros(shape, bool)
    idx = np.zeros(codes.shape[:-1] + (m,), dtype=np.int64)
    valid = np.ones(codes.shape[:-1] + (m,), dtype=bool)
    for j in range(k):
        window = codes[..., j : j + m]
        idx = idx * 4 + (window & 3)
        valid &= window < 4
    return idx, valid


def canonical_map(k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(to_canonical[4**k], kept_columns)``: each k-mer index mapped to min(kmer, revcomp)."""
    n = 4**k
    idx = np.arange(n)
    rc = np.zeros(n, dtype=np.int64)
    rest = idx.copy()
    for _ in range(k):
        rc = rc * 4 + (3 - rest % 4)
        rest //= 4
    canon = np.minimum(idx, rc)
    return canon, np.unique(canon)


def _unit_rows(x: np.ndarray, scale: float = 1.0) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x * scale, norms, out=np.zeros_like(x), where=norms > 0)


def spectrum(codes: np.ndarray, lengths: np.ndarray, k: int) -> np.ndarray:
    """k-mer counts per sequence, shape ``(n, 4**k)``, float64 (k-mers with N skipped)."""
    n = len(lengths)
    idx, valid = kmer_indices(codes, k)
    if idx.size:
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        seq_of = np.repeat(np.arange(n), lengths)[: idx.size]
        pos_in = np.arange(idx.size) - starts[seq_of]
        valid &= pos_in <= (lengths[seq_of] - k)
        flat = seq_of[valid] * (4**k) + idx[valid]
    else:
        flat = np.zeros(0, dtype=np.int64)
    return np.bincount(flat, minlength=n * 4**k).reshape(n, 4**k).astype(np.float64)


def gc_zcurve(codes: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GC content ``(n, 1)`` and phase-specific z-curve ``(n, 9)`` (see module docstring)."""
    n = len(lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    seq_of = np.repeat(np.arange(n), lengths)
    phase = (np.arange(codes.size) - starts[seq_of]) % 3
    counts = np.bincount((seq_of * 3 + phase) * 5 + codes, minlength=n * 15).reshape(n, 3, 5).astype(np.float64)
    a, c, g, t = counts[..., 0], counts[..., 1], counts[..., 2], counts[..., 3]
    per_phase = counts.sum(axis=2)
    acgt = (a + c + g + t).sum(axis=1)
    gc = np.divide((g + c).sum(axis=1), acgt, out=np.zeros(n), where=acgt > 0)[:, None]
    comps = np.stack([a + g - c - t, a + c - g - t, a + t - g - c], axis=2)  # (n, phase, xyz)
    z = np.divide(comps, per_phase[..., None], out=np.zeros_like(comps), where=per_phase[..., None] > 0)
    return gc, z.reshape(n, 9)


def fit_window(sequences: Sequence[str]) -> int:
    """The most common length (ties: the longest of them)."""
    counts = Counter(len(s) for s in sequences)
    if not counts:
        raise ValueError("cannot fit a position window on an empty corpus")
    best = max(counts.values())
    return max(length for length, c in counts.items() if c == best)


def window_codes(sequences: Sequence[str], window: int, policy: str) -> np.ndarray:
    """Centre-crop / centre-pad (with N) each sequence to ``window``; returns ``(n, window)`` codes."""
    out = np.full((len(sequences), window), 4, dtype=np.uint8)
    for i, s in enumerate(sequences):
        n = len(s)
        if n != window and policy == "error":
            raise ValueError(
                f"sequence {i} has length {n} but the position-aware encoder was fitted on "
                f"{window}-bp windows (length_policy='error'); use length_policy='crop_pad' "
                f"or a position-free encoder"
            )
        if n >= window:
            start = (n - window) // 2
            out[i] = _CODE[np.frombuffer(s[start : start + window].encode("ascii"), np.uint8)]
        elif n:
            left = (window - n) // 2
            out[i, left : left + n] = _CODE[np.frombuffer(s.encode("ascii"), np.uint8)]
    return out


def position_signal(sequences: Sequence[str], window: int) -> tuple[float, float]:
    """Largest per-position KL divergence (bits) of base frequencies from the overall base
    composition of the centred windows, and the KL expected from sampling noise alone
    (``3 / (2 n ln 2)`` for 4 bases)."""
    win = window_codes(sequences, window, "crop_pad")
    counts = np.stack([(win == b).sum(axis=0) for b in range(4)], axis=1).astype(np.float64) + 0.5
    p = counts / counts.sum(axis=1, keepdims=True)
    g = counts.sum(axis=0) / counts.sum()
    kl = (p * np.log2(p / g)).sum(axis=1)
    return float(kl.max()), 3.0 / (2.0 * max(len(sequences), 1) * np.log(2.0))


def position_block(win: np.ndarray, pos: PositionConfig) -> np.ndarray:
    """Binned positional k-mer occurrences for windowed codes ``(n, window)``."""
    n, window = win.shape
    n_bins = math.ceil(window / pos.bin_size)
    blocks = []
    for k in pos.ks:
        idx, valid = kmer_indices(win, k)  # (n, window-k+1)
        width = n_bins * 4**k
        bins = np.arange(idx.shape[1]) // pos.bin_size
        feat = bins[None, :] * 4**k + idx
        rows = np.broadcast_to(np.arange(n)[:, None], feat.shape)
        flat = rows[valid] * width + feat[valid]
        counts = np.bincount(flat, minlength=n * width).reshape(n, width).astype(np.float64)
        blocks.append(_unit_rows(counts, pos.weight))
    return np.concatenate(blocks, axis=1)


class KmerEncoder:
    """k-mer spectrum + GC + z-curve encoder, optionally position-aware. No weights.

    A position-aware encoder with ``window=0`` or ``enable="auto"`` must be ``fit`` on a
    reference corpus first; the fitted window and bin size (or the decision to drop the
    position block) become part of its ``spec`` and fingerprint.
    """

    def __init__(self, config: KmerConfig | None = None):
        self.config = config or KmerConfig()
        self._canon = {k: canonical_map(k) for k in self.config.ks} if self.config.canonical else {}

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "KmerEncoder":
        """Rebuild from :meth:`spec` (fitted window and decision included)."""
        if spec.get("type") != "kmer":
            raise ValueError(f"not a kmer encoder spec: {spec.get('type')!r}")
        if spec.get("version") != VERSION:
            raise ValueError(f"kmer encoder spec version {spec.get('version')} != supported {VERSION}")
        return cls(parse(KmerConfig, spec["config"]))

    def spec(self) -> dict[str, Any]:
        """Config and fitted state as JSON."""
        return {"type": "kmer", "version": VERSION, "config": to_dict(self.config)}

    @property
    def fingerprint(self) -> str:
        """Stable id of this encoder (see :func:`genoray.encoders.base.fingerprint`)."""

        return fingerprint(self)

    @property
    def needs_fit(self) -> bool:
        """Whether :meth:`fit` must run first (a position-aware block not fitted yet)."""
        pos = self.config.position
        return pos is not None and (pos.window == 0 or pos.bin_size == 0 or pos.enable == "auto")

    def fit(self, sequences: Sequence[str]) -> "KmerEncoder":
        """Resolve the position window (most common length) and bin size from a corpus, and
        with ``enable="auto"`` drop the position block when the corpus shows no positional
        signal (see :class:`~genoray.config.PositionConfig`). ``fit_info_`` records why."""
        pos = self.config.position
        if pos is None or not self.needs_fit:
            return self
        window = pos.window or fit_window(sequences)
        bin_size = pos.bin_size or max(1, math.ceil(window / pos.max_bins))
        signal, noise = position_signal(sequences, window)
        keep = bool(pos.enable == "always" or (signal > pos.min_signal_bits and signal > 10 * noise))
        self.fit_info_ = {"window": window, "bin_size": bin_size, "position_signal_bits": round(signal, 5),
                          "noise_bits": round(noise, 6), "position_block": keep}
        if not keep:
            self.config = dataclasses.replace(self.config, position=None)
            return self
        self.config = dataclasses.replace(
            self.config, position=dataclasses.replace(pos, window=window, bin_size=bin_size, enable="always")
        )
        return self

    # -- encoding -----------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Length of each embedding vector."""
        cfg = self.config
        d = sum(len(self._canon[k][1]) if cfg.canonical else 4**k for k in cfg.ks)
        d += int(cfg.gc) + 9 * int(cfg.zcurve)
        if cfg.position is not None:
            if self.needs_fit:
                raise ValueError("position-aware KmerEncoder is not fitted: call fit(sequences) first")
            n_bins = math.ceil(cfg.position.window / cfg.position.bin_size)
            d += sum(n_bins * 4**k for k in cfg.position.ks)
        return d

    def embed(self, sequences: Sequence[str]) -> np.ndarray:
        """Encode cleaned sequences (A/C/G/T/N) into ``float32[len(sequences), dim]``."""
        cfg = self.config
        if cfg.position is not None and self.needs_fit:
            raise ValueError("position-aware KmerEncoder is not fitted: call fit(sequences) first")
        if len(sequences) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        codes, lengths = encode_batch(sequences)
        blocks = []
        for k in cfg.ks:
            counts = spectrum(codes, lengths, k)
            if cfg.canonical:
                to_canon, kept = self._canon[k]
                merged = np.zeros_like(counts)
                np.add.at(merged.T, to_canon, counts.T)
                counts = merged[:, kept]
            blocks.append(_unit_rows(counts))
        if cfg.gc or cfg.zcurve:
            gc, z = gc_zcurve(codes, lengths)
            if cfg.gc:
                blocks.append(gc)
            if cfg.zcurve:
                blocks.append(z)
        if cfg.position is not None:
            win = window_codes(sequences, cfg.position.window, cfg.position.length_policy)
            blocks.append(position_block(win, cfg.position))
        return np.concatenate(blocks, axis=1).astype(np.float32)
