"""Bounded input beyond FASTA (issue 25, item 6): a gzipped FASTQ or CSV/TSV whose one record
expands to 256 MiB is read with memory bounded by the record cap
(``genoray.sequences.fasta.record_cap``) or pyarrow's block size, not by how far it expands.
FASTQ (``long_records="reject"``): the bomb is rejected as too long and the record after it is
read; in window mode, where cutting would lose bases, the file is refused naming the record;
CSV: a row longer than a block is refused naming the file. The FASTQ tests fail on the code
before the fix (dnaio held the whole record: peak RSS grew by ~1.3 GiB).
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_attacks_input import BOMB_MIB, BOUND_MIB, ROOT

READER = """
import json, resource, sys
from genoray.config import ReadConfig
from genoray.config.reading import CleanPolicy
from genoray.sequences import read_sequences
from genoray.sequences.report import SequenceFormatError
import dnaio, pyarrow, pyarrow.csv  # imported before the baseline
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    table, report = read_sequences(sys.argv[1], ReadConfig(clean=CleanPolicy(long_records=sys.argv[2])))
    res = {"ids": table.column("seq_id").to_pylist(), "rejected": report.rejected, "read": report.read}
except SequenceFormatError as e:
    res = {"error": str(e)}
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grew_kib": peak - base, **res}))
"""


def _fastq_bomb(path: Path) -> Path:
    """``@bomb`` with ``BOMB_MIB`` MiB of ``N`` and as many quality bytes, then a normal record."""
    with gzip.open(path, "wb", compresslevel=6) as f:
        f.write(b"@bomb label=x\n")
        for _ in range(BOMB_MIB):
            f.write(b"N" * (1 << 20))
        f.write(b"\n+\n")
        for _ in range(BOMB_MIB):
            f.write(b"I" * (1 << 20))
        f.write(b"\n@ok label=y\nACGTACGTAC\n+\nIIIIIIIIII\n")
    assert path.stat().st_size < 2 * 2**20  # small on disk
    return path


def _table_bomb(path: Path, sep: bytes) -> Path:
    """A header row, a row whose sequence cell is ``BOMB_MIB`` MiB of ``N``, then a normal row."""
    with gzip.open(path, "wb", compresslevel=6) as f:
        f.write(sep.join([b"seq_id", b"sequence", b"label"]) + b"\nbomb" + sep)
        for _ in range(BOMB_MIB):
            f.write(b"N" * (1 << 20))
        f.write(sep + b"x\nok" + sep + b"ACGTACGTAC" + sep + b"y\n")
    assert path.stat().st_size < 2**20
    return path


def _read(path: Path, mode: str, cwd: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", READER, str(path), mode], capture_output=True, text=True,
                         timeout=240, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, cwd=cwd)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{path.name} ({mode}): peak RSS growth {res['grew_kib'] / 1024:.1f} MiB for a {BOMB_MIB} MiB record")
    assert res["grew_kib"] < BOUND_MIB * 1024, res["grew_kib"]
    return res


def test_a_gzipped_fastq_bomb_is_rejected_as_too_long_within_the_bound(tmp_path):
    res = _read(_fastq_bomb(tmp_path / "bomb.fq.gz"), "reject", tmp_path)
    assert res["ids"] == ["ok"] and res["read"] == 2 and res["rejected"] == {"too_long": 1}


def test_a_gzipped_fastq_bomb_in_window_mode_is_refused_within_the_bound(tmp_path):
    res = _read(path := _fastq_bomb(tmp_path / "bomb.fastq.gz"), "window", tmp_path)
    assert res["error"].startswith(f"{path}: record 1: a line over 3048576 decompressed bytes"), res
    assert "convert the file to FASTA" in res["error"]


@pytest.mark.parametrize(("name", "sep"), [("bomb.csv.gz", b","), ("bomb.tsv.gz", b"\t")])
def test_a_gzipped_table_bomb_is_refused_within_the_bound(tmp_path, name, sep):
    res = _read(path := _table_bomb(tmp_path / name, sep), "reject", tmp_path)
    assert res["error"].startswith(f"{path}: file: malformed delimited text: straddling object"), res
