"""Helpers shared by the heads: label codes, the kNN vote, calibration, stratified samples,
leave-one-out neighbours from the index."""

from __future__ import annotations

import logging

import numpy as np

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
