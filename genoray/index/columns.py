"""Arrow-backed id and label columns of an index: int64 global ids index them, and no Python
object array (about 170 bytes a row) is built at load."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


class ArrowColumn:
    """A read-only string column indexed by global id, backed by an Arrow array.

    Behaves like the numpy object arrays it replaces where callers need it: ``col[i]`` is a
    Python value, ``col[positions]`` a small object array of the same shape (``-1`` gives
    ``None``), ``len``, iteration and ``np.asarray(col)`` (which materialises every row: avoid
    on large indexes). A chunked array stays chunked (one chunk per shard), so a column read
    from memory-mapped id tables is never copied.
    """

    def __init__(self, array: pa.Array | pa.ChunkedArray):
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            v = self.array[int(key)]
            return v.as_py()
        if isinstance(key, slice):
            return np.array(self.array[key].to_pylist(), dtype=object)
        pos = np.asarray(key)
        if pos.dtype == bool:
            pos = np.flatnonzero(pos)
        flat = pos.astype(np.int64).ravel()
        valid = flat >= 0
        taken = self.take(np.where(valid, flat, 0)).to_pylist()
        out = np.array(taken, dtype=object)
        out[~valid] = None
        return out.reshape(pos.shape)

    def take(self, positions) -> pa.Array:
        """The values at ``positions`` (integers in ``0..len-1``) as one Arrow array, in that order,
        taken chunk by chunk: ``ChunkedArray.take`` first concatenates every chunk of a string
        column (pyarrow 26), a private copy of the whole (memory-mapped) column per call, so
        this keeps a lookup's memory proportional to the positions, not to the index."""
        pos = np.asarray(positions, dtype=np.int64).ravel()
        a = self.array
        if isinstance(a, pa.Array):
            return a.take(pa.array(pos))
        if a.num_chunks <= 1:
            return (a.chunk(0) if a.num_chunks else pa.array([], a.type)).take(pa.array(pos))
        starts = np.cumsum([0] + [len(c) for c in a.chunks[:-1]], dtype=np.int64)
        which = np.searchsorted(starts, pos, side="right") - 1  # an empty chunk is never chosen
        order = np.argsort(which, kind="stable")
        bounds = np.searchsorted(which[order], np.arange(a.num_chunks + 1))
        parts = [a.chunk(c).take(pa.array(pos[order[lo:hi]] - starts[c]))
                 for c, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])) if hi > lo]
        got = pa.concat_arrays(parts) if parts else pa.array([], a.type)
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return got.take(pa.array(back))

    def __iter__(self):
        for chunk_start in range(0, len(self.array), 65536):
            yield from self.array[chunk_start:chunk_start + 65536].to_pylist()

    def __array__(self, dtype=None, copy=None):
        return np.array(self.array.to_pylist(), dtype=object if dtype is None else dtype)

    @property
    def nbytes(self) -> int:
        """Bytes of the Arrow buffers."""
        return int(self.array.nbytes)


def as_column(values) -> ArrowColumn:
    """Strings (``None`` kept) as an :class:`ArrowColumn`."""
    if isinstance(values, ArrowColumn):
        return values
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return ArrowColumn(values.cast(pa.string()))
    return ArrowColumn(pa.array([None if v is None else str(v) for v in values], pa.string()))
