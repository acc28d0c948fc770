"""Bounded input (issue 25, item 6): a gzip bomb in a FASTA file is read with memory bounded by
the record cap (``genoray.sequences.fasta.record_cap``: twice ``max_length`` plus a 1 MiB
header line), not by how far it expands. Each test fails on the code before the fix.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOMB_MIB = 256  # decompressed size of the bomb's one record
BOUND_MIB = 96  # stated bound on the reader's peak RSS growth (record cap 3 MiB; measured ~46 MiB, the old reader 540-1020 MiB)

READER = """
import json, resource, sys
from genoray.config import ReadConfig
from genoray.config.reading import CleanPolicy
from genoray.sequences import read_sequences
import dnaio, pyarrow  # imported before the baseline
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
table, report = read_sequences(sys.argv[1], ReadConfig(clean=CleanPolicy(long_records=sys.argv[2])))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grew_kib": peak - base, "ids": table.column("seq_id").to_pylist(),
                  "rejected": report.rejected, "read": report.read}))
"""


def _bomb(path: Path, one_line: bool) -> Path:
    """``>bomb`` with ``BOMB_MIB`` MiB of ``N`` (one line, or 60-base lines), then a normal record.
    ``N``: in window mode every window is rejected (N fraction), so what is held is the reader's
    own state, not windows it was asked to output."""
    line = b"N" * (1 << 20) if one_line else (b"N" * 59 + b"\n") * ((1 << 20) // 60)
    with gzip.open(path, "wb", compresslevel=6) as f:
        f.write(b">bomb label=x\n")
        for _ in range(BOMB_MIB):
            f.write(line)
        f.write(b"\n>ok label=y\nACGTACGTAC\n")
    assert path.stat().st_size < 2 * 2**20  # small on disk
    return path


@pytest.mark.parametrize(("mode", "one_line"), [("reject", True), ("window", True), ("reject", False)],
                         ids=["reject-one-line", "window-one-line", "reject-wrapped"])
def test_a_gzip_bomb_stays_under_the_memory_bound(tmp_path, mode, one_line):
    """A ~0.3 MiB ``.fa.gz`` whose first record expands to 256 MiB: the old reader held the
    whole record (dnaio) or the whole line (the windowed streamer) before rejecting it; now
    the reader's peak RSS grows by under 96 MiB, the bomb is rejected (as too long, or each of
    its windows for its Ns) and the record after it is still read."""
    path = _bomb(tmp_path / "bomb.fa.gz", one_line)
    out = subprocess.run([sys.executable, "-c", READER, str(path), mode], capture_output=True, text=True,
                         timeout=240, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"peak RSS growth {res['grew_kib'] / 1024:.1f} MiB for a {BOMB_MIB} MiB record")
    assert res["grew_kib"] < BOUND_MIB * 1024, res["grew_kib"]
    assert res["ids"] == ["ok"] and res["read"] == 2
