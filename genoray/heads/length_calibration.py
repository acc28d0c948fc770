"""A temperature per query length, on top of a fused head's calibration.

A head is calibrated on validation rows at the length it was trained on. The k-mer features of
a shorter sequence are noisier (fewer k-mers) and those of a longer one sharper, so the same
head is over-confident on short queries and mis-calibrated on long ones (``bench/bench_shift.py``:
ECE 0.10-0.20 on cropped or joined rows against 0.02-0.07 in-domain), and no rule fitted on an
unlabeled target can see that. When :meth:`FusedHead.fit <genoray.heads.FusedHead.fit>` gets the
training sequences and the encoder, :func:`fit` takes a bounded, class-stratified sample of the
head's *validation* rows, crops them to each length of the OOD scorer's grid
(:func:`genoray.sequences.lengths.length_grid`: ratio 1.25 from 16 bp, the same grid and cropping code),
embeds them, predicts them with the parts fitted without them (the validation fit's linear part
and trees, the kNN vote over the index with every validation row excluded), applies the head's
own calibration and fits one temperature per length by log-loss on top of it.

At predict time a query of length L gets the temperature interpolated in log-length between
the fitted lengths, constant beyond the shortest and the longest. The native length (median
length of the sampled rows) keeps temperature 1: the head's own calibration, fitted on the same
rows at that length, is unchanged there.

**Longer than the reference.** A query longer than the rows the head learned from holds more
than one window of their length, and only part of it need belong to the predicted class; its
sharper features make the head more confident, not more often right. So one more point is
fitted at twice the native length on two held-out rows joined (the label of the first, the
second drawn at random from the other sampled rows, any class), and longer queries use that
temperature. The alternative, the native temperature for every longer query, assumes a long
query is as predictable as a native one, which nothing here supports.

**Cost.** G lengths (the grid below the native length, about ``log(L / 16) / log(1.25)``: 15 at
500 bp, plus the joined point) x at most ``MAX_ROWS`` (2,000) rows: G x 2,000 embeddings, index
searches and part predictions, and a 57-point temperature search per length. It does not grow
with the store: the rows are a fixed-size sample; only each index search costs what one
prediction's search costs (a flat index scans n rows, an IVF index n x nprobe / nlist).

Saved as ``length_calibration.json`` (payload sha256) next to ``head.json``, which records the
file's sha256; heads saved without it load and predict as before.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from genoray.config import OODConfig
from genoray.heads.common import _check_X, _log_loss, _loo_neighbours, align_proba, calibrate, stratified_sample
from genoray.heads.select import mix
from genoray.infra.artifacts import read_signed, sha256_file, write_signed
from genoray.infra.documents import from_json, record, to_json
from genoray.sequences.lengths import crop, length_grid

log = logging.getLogger(__name__)

FILE = "length_calibration.json"
MAX_ROWS = 2000  # validation rows sampled for the fit (bounds its cost, see the module docstring)
# wider than the head's own grid (0.25-4): at 16 bp a 300-bp head is near chance and needs T > 4
_GRID = np.exp(np.linspace(np.log(0.25), np.log(32.0), 57))


@record
class LengthCalibration:
    """Temperatures per sequence length (increasing ``lengths``; 1.0 at ``native_length``),
    with the log-loss of the sampled held-out rows at each length before and after; the
    payload of ``length_calibration.json``."""

    KIND: ClassVar[str] = "length calibration"
    FORMAT_VERSION: ClassVar[int] = 1
    format_version: int
    kind: str
    lengths: tuple[int, ...]
    temperatures: tuple[float, ...]
    native_length: int
    rows: int
    log_loss_before: tuple[float, ...]
    log_loss_after: tuple[float, ...]

    def __post_init__(self):
        if self.kind != "length_calibration":
            raise ValueError(f"not a length calibration (kind {self.kind!r})")
        n = len(self.lengths)
        if n == 0 or any(len(v) != n for v in (self.temperatures, self.log_loss_before, self.log_loss_after)):
            raise ValueError(f"length calibration: {n} lengths, {len(self.temperatures)} temperatures")
        if any(b <= a for a, b in zip(self.lengths, self.lengths[1:])) or min(self.lengths) < 1:
            raise ValueError(f"length calibration lengths must increase from >= 1, got {list(self.lengths)}")
        if not all(np.isfinite(t) and t > 0 for t in self.temperatures):
            raise ValueError(f"length calibration temperatures must be positive, got {list(self.temperatures)}")

    def temperature_at(self, lengths: Sequence[int] | np.ndarray) -> np.ndarray:
        """The temperature of each length: interpolated in log-length, flat beyond the ends."""
        ll = np.log(np.maximum(np.asarray(lengths, dtype=np.float64), 1.0))
        return np.interp(ll, np.log(np.asarray(self.lengths, dtype=np.float64)), np.asarray(self.temperatures))

    def apply(self, proba: np.ndarray, lengths: Sequence[int] | np.ndarray) -> np.ndarray:
        """Calibrated probabilities of queries of ``lengths`` tempered at their length
        (``p ** (1/T)`` renormalised; the argmax never changes)."""
        p = np.asarray(proba, dtype=np.float64)
        if len(lengths) != len(p):
            raise ValueError(f"{len(lengths)} lengths for {len(p)} rows of probabilities")
        logp = np.log(np.clip(p, 1e-12, 1.0)) / self.temperature_at(lengths)[:, None]
        logp -= logp.max(axis=1, keepdims=True) if len(p) else 0.0
        e = np.exp(logp)
        return e / e.sum(axis=1, keepdims=True)

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary (in the head's info and ``/v1/info``)."""
        return {"native_length": self.native_length, "rows": self.rows, "lengths": list(self.lengths),
                "temperatures": [round(t, 4) for t in self.temperatures],
                "log_loss_before": [round(v, 4) for v in self.log_loss_before],
                "log_loss_after": [round(v, 4) for v in self.log_loss_after]}

    def save(self, out_dir: str | Path) -> str:
        """Write ``length_calibration.json`` (signed); returns the file's sha256."""
        write_signed(Path(out_dir) / FILE, to_json(self))
        return sha256_file(Path(out_dir) / FILE)

    @classmethod
    def load(cls, path: str | Path, sha256: str | None = None) -> LengthCalibration:
        """Read a saved calibration; ``sha256``: the file's hash recorded in ``head.json``
        (a missing, edited or swapped file raises)."""
        f = Path(path) / FILE
        if not f.is_file():
            raise FileNotFoundError(f"{f}: head.json records a length calibration but the file is missing")
        return from_json(cls, read_signed(f, sha256), f)


def apply(head, proba: np.ndarray, lengths: Sequence[int] | np.ndarray | None) -> np.ndarray:
    """``proba`` tempered at each query's length when ``head`` has a length calibration and
    the lengths are known; unchanged otherwise (older heads, embeddings without sequences)."""
    lc = getattr(head, "length_calibration_", None)
    return proba if lc is None or lengths is None else lc.apply(proba, lengths)


def save(head, out_dir: str | Path) -> str | None:
    """Save ``head``'s length calibration into ``out_dir``; its file's sha256 (``None``: none)."""
    lc = getattr(head, "length_calibration_", None)
    return None if lc is None else lc.save(out_dir)


def fit(head, st) -> LengthCalibration | None:
    """Fit the temperatures of ``head`` (its mixture and calibration chosen) on the validation
    rows of its fit stage ``st`` (see the module docstring). ``st.length``: ``sequences``
    (aligned with the ``X`` given to ``fit``, or a callable from index ids to their sequences,
    returning ``None`` when they cannot be read: no length calibration then), ``encoder`` (or a
    zero-argument factory of it, called only when the sequences were read),
    ``ids`` and ``rows`` (index ids and positions in ``X`` of the sampled rows) and
    ``held_out`` (the validation fit's linear part and trees)."""

    pick = st.va[stratified_sample(st.codes[st.va], MAX_ROWS, head.seed + 3)]
    if len(pick) < 20:
        log.info("length calibration skipped: %d validation rows (< 20)", len(pick))
        return None
    sequences, encoder, st_ids = st.length["sequences"], st.length["encoder"], st.length["ids"]
    seqs = sequences(st_ids[pick]) if callable(sequences) else [sequences[i] for i in st.length["rows"][pick]]
    if seqs is None:
        log.warning("length calibration skipped: the training sequences could not be read")
        return None
    seqs = [str(s) for s in seqs]
    if not hasattr(encoder, "embed"):  # a factory, called only once the sequences are known to exist
        encoder = encoder()
    codes, ids, exclude = st.codes[pick], st_ids[pick], set(st_ids[st.va].tolist())
    native = int(np.median([len(s) for s in seqs]))
    cfg = OODConfig()
    rng = np.random.default_rng(head.seed + 4)
    partner = (np.arange(len(seqs)) + rng.integers(1, len(seqs), size=len(seqs))) % len(seqs)
    cases: list[tuple[int, list[str] | None]] = [(L, crop(seqs, L, rng)) for L in length_grid(native, cfg.min_length, cfg.length_ratio)]
    cases.append((native, None))
    cases.append((2 * native, [a + seqs[j] for a, j in zip(seqs, partner)]))
    lengths, temps, before, after = [], [], [], []
    for length, s in cases:
        x = st.X[pick] if s is None else _check_X(encoder.embed(s), st.X.shape[1])
        p = _held_out_proba(head, st, x, ids, exclude)
        t = 1.0 if s is None else float(_GRID[np.argmin([_log_loss(calibrate(p, g), codes) for g in _GRID])])
        lengths.append(length)
        temps.append(t)
        before.append(_log_loss(p, codes))
        after.append(_log_loss(calibrate(p, t), codes))
    return LengthCalibration(LengthCalibration.FORMAT_VERSION, "length_calibration", tuple(lengths), tuple(temps),
                             native, len(pick), tuple(before), tuple(after))


def _held_out_proba(head, st, x: np.ndarray, ids: np.ndarray, exclude: set) -> np.ndarray:
    """The head's calibrated mixture for rows ``x`` from the parts fitted without the
    validation rows: kNN vote with every validation row excluded, the validation fit's linear
    part and trees."""

    parts: dict[str, np.ndarray] = {}
    if head.mixture_["knn"] > 0:
        sims, pos = _loo_neighbours(st.index, x, ids, head.k, exclude=exclude)
        parts["knn"] = head.knn_.proba_from_neighbours(sims, pos)
    if head.mixture_["linear"] > 0:
        lin = st.length["held_out"]["linear"]
        parts["linear"] = align_proba(lin.classes_, lin.predict_proba(x), st.classes)
    if head.mixture_["trees"] > 0:
        parts["trees"] = st.length["held_out"]["trees"].predict_proba(x)
    return head._calibrate(mix(parts, {n: w for n, w in head.mixture_.items() if w > 0}))
