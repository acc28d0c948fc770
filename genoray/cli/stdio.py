"""``-`` for stdin and stdout on the command line.

An input of ``-`` (``embed``, ``predict``, ``reindex``) reads stdin: its bytes are spooled to
``stdin.fa``, ``stdin.fq`` or ``stdin.tsv`` in a fresh ``gr-stdin-*`` dir under the temp dir
(the readers need a named, seekable file; the dir is removed at exit), the format sniffed
from the first byte that is not white space: ``>`` FASTA, ``@`` FASTQ, anything else TSV with
a header line. Read, written and rejected records are counted as for a file (the summary's
``source`` is the spooled file). A store embedded from stdin cannot be resumed from stdin (the
next run spools to another file): embed a file for a long job. ``predict --out -`` writes the
predictions to stdout, as without ``--out`` (the summary goes to stderr).
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO

STDIO = "-"
SUFFIXES = {">": ".fa", "@": ".fq"}  # else .tsv
CHUNK = 1 << 20


def sniff_suffix(head: bytes) -> str:
    """The file suffix of the format that begins with ``head``: ``.fa``, ``.fq`` or ``.tsv``."""
    text = head.lstrip()[:1].decode("ascii", errors="replace")
    return SUFFIXES.get(text, ".tsv")


def spool(stream: BinaryIO) -> Path:
    """Copy ``stream`` to ``gr-stdin-*/stdin<suffix>`` under the temp dir (removed at exit)."""
    head = stream.read(CHUNK)
    while head and not head.strip() and (more := stream.read(CHUNK)):
        head += more
    d = Path(tempfile.mkdtemp(prefix="gr-stdin-"))
    atexit.register(shutil.rmtree, d, True)
    path = d / f"stdin{sniff_suffix(head)}"
    with path.open("wb") as out:
        out.write(head)
        shutil.copyfileobj(stream, out, CHUNK)
    return path


def resolve_stdio(args: argparse.Namespace, argv: list[str]) -> list[str]:
    """Replace an input of ``-`` in ``args.inputs`` by the spooled stdin (stdin is read once),
    and ``predict --out -`` by stdout; return ``argv`` with the same replacement, for a
    command that runs itself again as a supervised child."""
    if args.command == "predict" and getattr(args, "out", None) == STDIO:
        args.out = None
    inputs = getattr(args, "inputs", None)
    if not inputs or STDIO not in inputs:
        return argv
    path = str(spool(sys.stdin.buffer))
    args.inputs = [path if i == STDIO else i for i in inputs]
    return [path if tok == STDIO and (k == 0 or argv[k - 1] != "--out") else tok for k, tok in enumerate(argv)]
