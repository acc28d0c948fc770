"""Merge the partitions of an IVF shard list by list, on disk, in bounded memory.

``IndexIVF.merge_from`` appends every partition's inverted lists to one in-memory index, so a
merge held the whole shard (codes + 8-byte ids of every row: 72 B a row for 64-dim SQ8) before
writing it. :func:`write_merged_ivf` writes the same file without ever holding more than one
inverted list of one partition:

* the shard's header is the trained template's, with ``ntotal`` set to the shard's rows and its
  quantizer left out (:func:`~genoray.index.core.write_without_quantizer`); an empty trained
  index ends with an empty ``ArrayInvertedLists`` block (``ilar``, nlist, code size, ``sprs``,
  an empty size vector: :data:`EMPTY_TAIL` bytes), which is cut off;
* each partition file (``faiss.write_index`` of the template plus its rows) has that same
  header length, then its ``ilar`` block: list sizes, then per non-empty list its codes and
  ids. :class:`PartLists` reads the sizes and ``pread``s one list at a time (no memory map, so
  the pages read are not counted as this process's resident memory);
* the shard's ``ilar`` block is then written as FAISS writes it (``full`` sizes when more than
  half the lists are non-empty, else ``sprs`` pairs), list ``l`` being the partitions' list
  ``l`` in partition order, exactly what ``merge_from`` then ``write_index`` give: the file is
  byte-identical (tested).

Working memory: O(nlist x partitions) sizes plus the largest list of one partition, whatever
the shard's rows. A file in another layout (another FAISS inverted-list type, a header that does
not match) makes :func:`write_merged_ivf` return ``False`` before writing, and the caller
merges in memory as before.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genoray.embedding.store import LABEL, SEQ_ID
from genoray.index.core import _faiss, write_without_quantizer

EMPTY_TAIL = 32  # "ilar" + nlist (8) + code_size (8) + "sprs" + empty size vector (8)
_U64 = struct.Struct("<Q")


class PartLists:
    """The ``ArrayInvertedLists`` block of one partition's FAISS file, starting at ``start``:
    list sizes in memory, each list's codes and ids read on demand."""

    def __init__(self, path: str | Path, start: int, nlist: int, code_size: int):
        self.path, self.code_size = str(path), code_size
        self.fd = os.open(self.path, os.O_RDONLY)
        try:
            head = os.pread(self.fd, 32, start)
            if len(head) < 32 or head[:4] != b"ilar" or _U64.unpack(head[4:12])[0] != nlist or \
                    _U64.unpack(head[12:20])[0] != code_size or head[20:24] not in (b"full", b"sprs"):
                raise ValueError(f"{path}: no ArrayInvertedLists block of {nlist} lists at byte {start}")
            count = _U64.unpack(head[24:32])[0]
            raw = np.frombuffer(os.pread(self.fd, 8 * count, start + 32), dtype="<u8").astype(np.int64)
            if head[20:24] == b"full":
                self.sizes = raw
            else:
                self.sizes = np.zeros(nlist, np.int64)
                self.sizes[raw[0::2]] = raw[1::2]
            if len(self.sizes) != nlist:
                raise ValueError(f"{path}: {len(self.sizes)} list sizes, expected {nlist}")
            self.offsets = start + 32 + 8 * count + np.concatenate(
                [[0], np.cumsum(self.sizes * (code_size + 8))[:-1]]).astype(np.int64)
            end = int(self.offsets[-1] + self.sizes[-1] * (code_size + 8)) if nlist else start + 32
            if end != os.fstat(self.fd).st_size:
                raise ValueError(f"{path}: inverted lists end at byte {end}, the file has {os.fstat(self.fd).st_size}")
        except BaseException:
            os.close(self.fd)
            raise

    def codes(self, lst: int) -> bytes:
        """The codes of list ``lst`` (``size x code_size`` bytes)."""
        return os.pread(self.fd, int(self.sizes[lst]) * self.code_size, int(self.offsets[lst]))

    def ids(self, lst: int) -> bytes:
        """The int64 ids of list ``lst``."""
        n = int(self.sizes[lst])
        return os.pread(self.fd, 8 * n, int(self.offsets[lst]) + n * self.code_size)

    def close(self) -> None:
        """Close the file."""
        os.close(self.fd)


def write_merged_ivf(template_blob: np.ndarray, part_files: list[Path], path: Path) -> int | None:
    """Write the IVF shard holding ``part_files``' inverted lists (in that order) to ``path``,
    without its quantizer, list by list; returns the shard's ``ntotal``, or ``None`` (nothing
    written) when a file is not in the layout this reads (see the module docstring)."""
    faiss = _faiss()
    index = faiss.deserialize_index(np.asarray(template_blob))
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return None
    if ivf.ntotal or not isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.ArrayInvertedLists):
        return None
    nlist, code_size = int(ivf.nlist), int(ivf.code_size)
    start = len(np.asarray(template_blob)) - EMPTY_TAIL
    parts: list[PartLists] = []
    try:
        for f in part_files:
            try:
                parts.append(PartLists(f, start, nlist, code_size))
            except ValueError:
                return None
        sizes = np.sum([p.sizes for p in parts], axis=0).astype(np.int64) if parts else np.zeros(nlist, np.int64)
        total = int(sizes.sum())
        index.ntotal = total
        ivf.ntotal = total
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        write_without_quantizer(index, tmp)
        with open(tmp, "r+b") as out:
            out.seek(-EMPTY_TAIL, os.SEEK_END)
            tail = out.read()
            if tail != b"ilar" + _U64.pack(nlist) + _U64.pack(code_size) + b"sprs" + _U64.pack(0):
                out.close()
                os.unlink(tmp)
                return None
            out.seek(-EMPTY_TAIL, os.SEEK_END)
            out.truncate()
            out.write(b"ilar" + _U64.pack(nlist) + _U64.pack(code_size))
            nonzero = np.flatnonzero(sizes)
            if len(nonzero) > nlist // 2:
                vec = sizes
                out.write(b"full")
            else:
                vec = np.stack([nonzero, sizes[nonzero]], axis=1).ravel()
                out.write(b"sprs")
            out.write(_U64.pack(len(vec)) + vec.astype("<u8").tobytes())
            for lst in nonzero:
                held = [p for p in parts if p.sizes[lst]]
                for p in held:
                    out.write(p.codes(int(lst)))
                for p in held:
                    out.write(p.ids(int(lst)))
        os.replace(tmp, path)
        return total
    finally:
        for p in parts:
            p.close()


def write_shard_ids(part_files: list[Path], path: Path) -> None:
    """The shard's id table: the partitions' tables appended one at a time (one record batch
    per partition, at most :data:`~genoray.index.stages.PARTITION_ROWS` rows in memory), never concatenated whole."""
    empty = pa.schema([("gid", pa.int64()), (SEQ_ID, pa.string()), (LABEL, pa.string())])
    schema = pq.read_schema(part_files[0]) if part_files else empty
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for f in part_files:
            writer.write_table(pq.read_table(f).combine_chunks())
