"""The factory rules: which FAISS index a corpus gets, and what a factory string means.

In the spirit of autofaiss: fewer than ``flat_threshold`` vectors get an exact ``Flat`` index;
more get ``IVF<nlist>,SQ8`` (one byte per dimension) when the codes fit ``memory_budget_mb``,
else ``IVF<nlist>,PQ<m>`` with ``m`` bytes per vector chosen to fit (re-ranked from stored
float16 vectors so the recall target is reached); ``IVF<nlist>,Flat`` or ``HNSW32`` on request.
The build (:mod:`.build`) and the capacity plan (:mod:`.capacity`) both use these rules.
"""

from __future__ import annotations

import math
from typing import Any

from genoray.config import IndexConfig


def choose_factory(n: int, d: int, cfg: IndexConfig) -> str:
    """Index factory string for ``n`` vectors of dimension ``d`` (see the module docstring)."""
    if cfg.index_type != "auto":
        return cfg.index_type
    if n < cfg.flat_threshold:
        return "Flat"
    nlist = nlist_for(n)
    if n * d <= cfg.memory_budget_mb * 2**20:
        return f"IVF{nlist},SQ8"
    m = max(1, min(d // 2, int(cfg.memory_budget_mb * 2**20 / n)))
    while d % m:
        m -= 1
    return f"IVF{nlist},PQ{m}"


def parse_factory(factory: str, d: int) -> dict[str, Any]:
    """nlist, bytes per stored vector and flags of a factory string."""
    head, _, rest = factory.partition(",")
    nlist = int(head[3:]) if head.startswith("IVF") else 0
    enc = rest if nlist else factory
    if enc.startswith("PQ"):
        m = int(enc[2:].split("x")[0])
        code = m
    elif enc == "SQ8":
        code = d
    elif enc == "SQ4":
        code = math.ceil(d / 2)
    elif enc in ("SQfp16", "SQ16"):
        code = 2 * d
    elif enc.startswith("HNSW"):
        code = 4 * d + 2 * 4 * int(enc[4:] or 32)
    else:  # Flat
        code = 4 * d
    return {"nlist": nlist, "code_bytes": code, "pq": enc.startswith("PQ"), "ivf": nlist > 0,
            "hnsw": enc.startswith("HNSW")}


def nlist_for(n: int) -> int:
    """IVF lists for ``n`` vectors: 4 sqrt(n) rounded to a power of 2, in 64..65,536, and never
    so many that a list has fewer than 39 training points."""
    nlist = int(2 ** round(math.log2(max(64.0, min(65536.0, 4 * math.sqrt(max(n, 1)))))))
    while nlist > 64 and nlist * 39 > n:
        nlist //= 2
    return nlist


def train_sample_size(n: int, nlist: int, cap: int) -> int:
    """Training points: 64 per centroid, at least 39 (FAISS warns below), at most ``cap``
    unless the 39-point floor needs more, never more than ``n``."""
    if nlist == 0:
        return 0
    return int(min(n, max(39 * nlist, min(64 * nlist, cap))))

