"""``-`` as an input reads stdin (FASTA, FASTQ or TSV, sniffed) and ``predict --out -`` writes
to stdout (genoray.cli.stdio), run as a user would: a subprocess with a pipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from genoray.cli import commands as cli
from genoray.cli.stdio import sniff_suffix

FASTA = Path(__file__).parent / "data" / "uci_splice.sample.fasta"  # 300 labeled records
ROOT = Path(__file__).resolve().parent.parent


def _genoray(*argv, stdin: bytes) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "genoray.cli", *map(str, argv)], input=stdin, capture_output=True,
                          env=env, timeout=300)


@pytest.mark.parametrize("head, suffix", [(b">r1\nACGT\n", ".fa"), (b"\n\n  >r1\nACGT\n", ".fa"),
                                          (b"@r1\nACGT\n+\nIIII\n", ".fq"), (b"id\tsequence\nr1\tACGT\n", ".tsv"),
                                          (b"", ".tsv")])
def test_stdin_format_is_sniffed_from_the_first_byte(head, suffix):
    assert sniff_suffix(head) == suffix


def test_embed_and_predict_read_stdin_and_predict_writes_stdout(tmp_path, capsys):
    fasta = FASTA.read_bytes()
    bad = b">prot1 label=donor split=test\nMKVLAAGIVGLLLAQWERTY\n"
    r = _genoray("embed", "-", "--out", tmp_path / "st", "--no-ray", stdin=fasta + bad)
    assert r.returncode == 0, r.stderr.decode()
    summary = json.loads(r.stdout)
    assert (summary["read"], summary["written"], summary["rejected"]) == (301, 300, 1)
    assert cli.main(["index", str(tmp_path / "st"), "--out", str(tmp_path / "ix")]) == 0
    assert cli.main(["train", str(tmp_path / "st"), "--index", str(tmp_path / "ix"), "--out", str(tmp_path / "h")]) == 0
    capsys.readouterr()
    spools = set(Path(tempfile.gettempdir()).glob("gr-stdin-*"))
    r = _genoray("predict", "-", "--index", tmp_path / "ix", "--head", tmp_path / "h", "--out", "-", stdin=fasta + bad)
    assert r.returncode == 0, r.stderr.decode()
    rows = [json.loads(line) for line in r.stdout.decode().splitlines()]
    ids = [line.split()[0][1:] for line in fasta.decode().splitlines() if line.startswith(">")]
    assert [row["seq_id"] for row in rows] == ids  # every accepted record, in input order, nothing else on stdout
    err = json.loads(r.stderr.decode().strip().splitlines()[-1])  # the summary, on stderr
    assert (err["read"], err["predicted"], err["rejected"]) == (301, 300, 1)
    assert set(Path(tempfile.gettempdir()).glob("gr-stdin-*")) == spools  # the spooled stdin is removed at exit
