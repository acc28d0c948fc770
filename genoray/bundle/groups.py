"""Shard groups: how ``genoray serve`` splits a bundle's index over searcher deployments when
one replica cannot hold it (:mod:`genoray.serving.scatter` serves them).

A group is a list of shard numbers. :func:`shard_groups` makes them from a count (contiguous
shards balanced by bytes), checks explicit lists (a partition of the shards), or finds the
fewest groups whose searcher replica fits a memory budget, measuring shards and replicas the
way the capacity plan does (:func:`genoray.index.capacity.shard_sizes`,
:func:`~genoray.index.capacity.replica_bytes`). A version records them in ``bundle.json``.
"""

from __future__ import annotations

from pathlib import Path

from genoray.bundle.manifest import BundleManifest
from genoray.index.capacity import replica_bytes, shard_sizes


def _split(sizes: list[int], n: int) -> list[list[int]]:
    """``n`` contiguous groups of shard numbers with balanced bytes (none empty): each shard goes
    to the group its byte midpoint falls in, so near-equal shards split evenly whatever their
    small differences; when that leaves a group empty, the groups are cut by shard count."""
    total = sum(sizes) or 1
    owner, acc = [], 0
    for s in sizes:
        owner.append(min(n - 1, int((acc + s / 2) * n / total)))
        acc += s
    if len(set(owner)) < n:
        owner = [i * n // len(sizes) for i in range(len(sizes))]
    return [[i for i, g in enumerate(owner) if g == k] for k in range(n)]


def shard_groups(index_dir: str | Path, groups: int | list[list[int]] | None = None,
                 memory_budget: int | None = None) -> list[list[int]]:
    """The shard groups of an index: ``groups`` as a count (contiguous shards, balanced by
    bytes) or explicit lists (a partition of the shard numbers), or, with ``memory_budget``
    (bytes per searcher replica), the fewest groups whose largest replica fits it."""
    index_dir = Path(index_dir)
    shards, quantizer = shard_sizes(index_dir)
    sizes = [s.mapped + s.ids for s in shards]
    n = len(sizes)
    if memory_budget is not None:
        def need(group: list[int]) -> int:  # one searcher replica of the group, its shards in its memory
            return replica_bytes([shards[i] for i in group], quantizer, 0, 1, mmap=False)

        for g in range(1, n + 1):
            split = _split(sizes, g)
            if max(need(grp) for grp in split) <= memory_budget:
                return split
        one = max(need([i]) for i in range(n))
        raise ValueError(f"{index_dir}: one shard needs {one / 2**20:.0f} MiB per searcher replica, over the budget "
                         f"of {memory_budget / 2**20:.0f} MiB; rebuild the index with more shards")
    if isinstance(groups, int):
        if not 1 <= groups <= n:
            raise ValueError(f"{index_dir}: {groups} shard groups for {n} shards (need 1..{n})")
        return _split(sizes, groups)
    lists = [[int(i) for i in g] for g in (groups or [list(range(n))])]
    if sorted(i for g in lists for i in g) != list(range(n)) or not all(lists):
        raise ValueError(f"{index_dir}: shard groups {lists} are not a partition of shards 0..{n - 1}")
    return lists


def groups_of(doc: BundleManifest) -> list[list[int]] | None:
    """The version's shard groups (``None``: one group, the whole index)."""
    return [list(g) for g in doc.shard_groups] if doc.shard_groups and len(doc.shard_groups) > 1 else None
