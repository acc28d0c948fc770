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
        taken = self.array.take(pa.array(np.where(valid, flat, 0))).to_pylist()
        out = np.array(taken, dtype=object)
        out[~valid] = None
        return out.reshape(pos.shape)

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
