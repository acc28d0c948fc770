"""Helpers shared by the heads: label codes, the kNN vote, calibration, stratified samples,
leave-one-out neighbours from the index (at a bounded cost per row: :func:`bounded_search`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from genoray.index.factory import parse_factory

log = logging.getLogger(__name__)


_ISO_FLOOR = 1e-4
_TEMPERATURE_GRID = np.exp(np.linspace(np.log(0.25), np.log(4.0), 33))
_C_GRID = (0.01, 0.1, 1.0)


def _encode(y, classes: np.ndarray) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(classes)}
    try:
        return np.array([lookup[v] for v in y], dtype=np.int64)
    except KeyError as e:
        raise ValueError(f"label {e.args[0]!r} not among the classes seen in fit: {list(classes)}") from None


def _check_X(X, n_features: int | None = None) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"expected a 2-D embedding matrix, got shape {X.shape}")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"X has {X.shape[1]} features, but the head was fitted with {n_features}")
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or infinity")
    return X


def vote(sims: np.ndarray, nbr_codes: np.ndarray, n_classes: int, temperature: float, smoothing: float = 0.1) -> np.ndarray:
    """Class probabilities from neighbour similarities ``(n, k)`` and label codes ``(n, k)``
    (``-1`` = no neighbour): softmax(sim / T) weights summed per class, plus ``smoothing``
    spread evenly over classes, renormalised."""
    valid = nbr_codes >= 0
    s = np.where(valid, sims, -np.inf).astype(np.float64)
    top = np.max(s, axis=1, keepdims=True)
    top[~np.isfinite(top)] = 0.0
    w = np.where(valid, np.exp((s - top) / temperature), 0.0)
    total = w.sum(axis=1, keepdims=True)
    w = np.divide(w, total, out=np.zeros_like(w), where=total > 0)
    p = np.zeros((sims.shape[0], n_classes))
    rows = np.broadcast_to(np.arange(sims.shape[0])[:, None], sims.shape)
    np.add.at(p, (rows[valid], nbr_codes[valid]), w[valid])
    p += smoothing / n_classes
    return p / p.sum(axis=1, keepdims=True)


def drop_own(sims: np.ndarray, pos: np.ndarray, own: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the first ``k`` neighbours that are not marked ``own`` (the query itself), from a
    search done with one extra neighbour; rows without a self-hit drop the extra one."""
    own = own.copy()
    own[~own.any(axis=1), -1] = True
    order = np.argsort(own, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, 1), np.take_along_axis(pos, order, 1)


def align_proba(classes_from, p: np.ndarray, classes_to) -> np.ndarray:
    """Columns of ``p`` (in ``classes_from`` order) re-indexed to ``classes_to`` (0 where absent)."""
    where = {c: i for i, c in enumerate(classes_to)}
    out = np.zeros((p.shape[0], len(where)))
    for j, c in enumerate(classes_from):
        out[:, where[c]] = p[:, j]
    return out


def _log_loss(p: np.ndarray, codes: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(p[np.arange(len(codes)), codes], 1e-12, 1.0))))


def calibrate(p: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature scaling on probabilities: ``p ** (1/T)`` renormalised."""
    logp = np.log(np.clip(p, 1e-12, 1.0)) / temperature
    logp -= logp.max(axis=1, keepdims=True)
    e = np.exp(logp)
    return e / e.sum(axis=1, keepdims=True)


def _fit_temperature(p: np.ndarray, codes: np.ndarray) -> float:
    cal = [_log_loss(calibrate(p, t), codes) for t in _TEMPERATURE_GRID]
    return float(_TEMPERATURE_GRID[int(np.argmin(cal))])


def _fit_isotonic(p: np.ndarray, codes: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """One-vs-rest isotonic maps (thresholds x -> y) per class; binary heads map class 1 only."""
    from sklearn.isotonic import IsotonicRegression

    cols = [1] if p.shape[1] == 2 else range(p.shape[1])
    maps = []
    for c in cols:
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p[:, c], (codes == c).astype(float))
        maps.append((np.asarray(iso.X_thresholds_, dtype=np.float64), np.asarray(iso.y_thresholds_, dtype=np.float64)))
    return maps


def apply_isotonic(p: np.ndarray, maps: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Apply :func:`_fit_isotonic` maps (piecewise-linear, clipped), floored at 1e-4 and renormalised."""
    if p.shape[1] == 2:
        p1 = np.interp(p[:, 1], *maps[0])
        q = np.stack([1.0 - p1, p1], axis=1)
    else:
        q = np.stack([np.interp(p[:, c], *maps[c]) for c in range(p.shape[1])], axis=1)
    q = np.clip(q, _ISO_FLOOR, None)
    return q / q.sum(axis=1, keepdims=True)


def _stratified_split(codes: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    val = np.zeros(len(codes), dtype=bool)
    for c in np.unique(codes):
        members = np.flatnonzero(codes == c)
        n_val = int(round(len(members) * fraction))
        if len(members) >= 2:
            val[rng.choice(members, size=min(max(n_val, 1), len(members) - 1), replace=False)] = True
    return np.flatnonzero(~val), np.flatnonzero(val)


def stratified_sample(codes: np.ndarray, n_max: int, seed: int) -> np.ndarray:
    """Sorted positions of a seeded sample of at most ``n_max`` rows, each class kept in
    proportion (at least one row per class); all rows when there are no more than ``n_max``."""
    if len(codes) <= n_max:
        return np.arange(len(codes))
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(codes):
        members = np.flatnonzero(codes == c)
        n = max(1, int(round(len(members) * n_max / len(codes))))
        keep.append(rng.choice(members, size=min(n, len(members)), replace=False))
    return np.sort(np.concatenate(keep))


class StratifiedStream:
    """A seeded class-stratified sample of a stream whose class counts are known (from a first
    pass), drawn as :func:`stratified_sample` draws it: ``counts[k]`` rows of class code ``k``,
    ``n = sum(counts)``; every row when ``n <= n_max``. :meth:`take` is then called on the
    stream's chunks of codes, in order, and returns the positions in each chunk the sample
    keeps, so memory is one chunk plus the sample."""

    def __init__(self, counts, n_max: int, seed: int):
        counts = np.asarray(counts, dtype=np.int64)
        self.n = int(counts.sum())
        self.every = self.n <= n_max
        rng = np.random.default_rng(seed)
        self.ranks = []
        for m in counts:  # as stratified_sample: rng.choice(members, size) == members[rng.choice(m, size)]
            size = min(max(1, int(round(m * n_max / self.n))), int(m)) if not self.every and m else 0
            self.ranks.append(np.sort(rng.choice(int(m), size=size, replace=False)) if size else np.zeros(0, np.int64))
        self.seen = np.zeros(len(counts), dtype=np.int64)
        self.size = self.n if self.every else int(sum(len(r) for r in self.ranks))

    def take(self, codes: np.ndarray) -> np.ndarray:
        """Sorted positions in ``codes`` (the next chunk of the stream) of the sampled rows."""
        if self.every:
            return np.arange(len(codes))
        keep = []
        for k, r in enumerate(self.ranks):
            members = np.flatnonzero(codes == k)
            lo, hi = np.searchsorted(r, self.seen[k]), np.searchsorted(r, self.seen[k] + len(members))
            keep.append(members[r[lo:hi] - self.seen[k]])
            self.seen[k] += len(members)
        return np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)


def stratified_positions(labels, classes, n_max: int, seed: int, chunk: int = 65_536) -> np.ndarray:
    """:func:`stratified_sample` of a label column without its ``n``-row code array: equal to
    ``stratified_sample(codes, n_max, seed)`` where ``codes`` are the positions of ``labels``
    (a pyarrow array, chunked or not, without nulls) in ``classes`` (sorted, each present).
    The class counts come from one streamed pass, then :class:`StratifiedStream` maps each
    ``chunk``-row slice to its sampled positions: memory is one chunk plus the sample."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(labels)
    if n <= n_max:
        return np.arange(n)
    value_set = pa.array([str(c) for c in classes], pa.string())

    def codes(a: int) -> np.ndarray:
        c = pc.index_in(labels[a:a + chunk], value_set=value_set).to_numpy(zero_copy_only=False)
        return c.astype(np.int64)

    counts = np.zeros(len(classes), dtype=np.int64)
    for a in range(0, n, chunk):
        counts += np.bincount(codes(a), minlength=len(classes))
    stream = StratifiedStream(counts, n_max, seed)
    return np.concatenate([a + stream.take(codes(a)) for a in range(0, n, chunk)])


def _loo_neighbours(index, X: np.ndarray, ids: np.ndarray, k: int, batch: int = 8192,
                    exclude: set | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours of rows ``X`` (whose ids are ``ids``) in ``index``, each row's own
    entry excluded, and with ``exclude`` also every row whose id is in that set (searched in
    batches with extra neighbours; missing neighbours get position -1)."""
    out_s, out_p = [], []
    k_eff = min(k, index.ntotal - 1)
    k_search = min(index.ntotal, k_eff + 1 if exclude is None else 3 * k_eff + 10)
    in_excluded = None if exclude is None else np.frompyfunc(exclude.__contains__, 1, 1)
    for a in range(0, len(X), batch):
        sims, pos = index.search(X[a : a + batch], k_search)
        found = index.ids[np.clip(pos, 0, None)]
        bad = (found == np.asarray(ids[a : a + batch], dtype=object)[:, None]) | (pos < 0)
        if in_excluded is None:
            s, p = drop_own(sims, pos, bad & (pos >= 0), k_eff)
        else:
            bad |= in_excluded(found).astype(bool)
            order = np.argsort(bad, axis=1, kind="stable")[:, :k_eff]
            s, p = np.take_along_axis(sims, order, 1), np.take_along_axis(pos, order, 1)
            p = np.where(np.take_along_axis(bad, order, 1), -1, p)
        out_s.append(s)
        out_p.append(p)
    return np.concatenate(out_s), np.concatenate(out_p)


def fit_nprobe(index, scan_rows: int) -> int | None:
    """The ``nprobe`` a fit's searches of an IVF ``index`` use: ``nlist x scan_rows / ntotal``
    (so one search scans about ``scan_rows`` vectors), at least 1 and never above the index's
    own; ``None`` when the index has no ``nprobe`` (Flat, HNSW) or is not a saved-index kind."""
    manifest = getattr(index, "manifest", None)
    params = dict(getattr(manifest, "search_params", None) or {})
    if manifest is None or "nprobe" not in params:
        return None
    nlist = parse_factory(manifest.factory, int(manifest.dim))["nlist"]
    if not nlist:
        return None
    return int(max(1, min(int(params["nprobe"]), nlist * scan_rows // max(int(index.ntotal), 1))))


@contextmanager
def bounded_search(index, scan_rows: int) -> Iterator[int | None]:
    """Within the block, ``index`` (an IVF :class:`~genoray.index.VectorIndex`) is searched at
    :func:`fit_nprobe`; its recall-tuned search parameters are restored on exit. Yields the
    ``nprobe`` used (``None``: unchanged)."""
    nprobe = fit_nprobe(index, scan_rows)
    tuned = dict(index.manifest.search_params) if nprobe is not None else {}
    if nprobe is None or nprobe == tuned["nprobe"]:
        yield nprobe
        return
    index.set_search_params({**tuned, "nprobe": nprobe})
    try:
        yield nprobe
    finally:
        index.set_search_params(tuned)
