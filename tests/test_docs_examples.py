"""The docs' shell examples marked ``<!-- runnable: FILES -->`` run as written, in a temp dir
holding FILES (small inputs), with ``genoray`` on PATH being this checkout (the README's own
examples: tests/test_readme.py, whose block finder this reuses)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.test_readme import ROOT, _blocks

PAGES = ("docs/getting-started.md", "docs/usage.md")
INPUTS = {"small.fa": ROOT / "tests" / "data" / "uci_splice.sample.fasta"}  # 300 labeled records
MARK = re.compile(r"<!-- runnable: ([^>]*?) -->\n```bash\n")


def runnable() -> list[tuple[str, list[str], str]]:
    """``(page, input files, block)`` of every bash block marked runnable on :data:`PAGES`."""
    out = []
    for page in PAGES:
        text = (ROOT / page).read_text()
        for block in _blocks("bash", text):
            for m in MARK.finditer(text):
                if text[m.end():].startswith(block):
                    out.append((page, m.group(1).split(), block))
    return out


def test_the_docs_mark_runnable_examples():
    assert [(p, files) for p, files, _ in runnable()] == [("docs/usage.md", ["small.fa"])]


@pytest.mark.slow
@pytest.mark.parametrize("page, files, block", runnable(), ids=lambda v: v if isinstance(v, str) and "/" in v else "")
def test_docs_example_runs(tmp_path, page, files, block):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "genoray"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m genoray.cli "$@"\n')
    shim.chmod(0o755)
    for name in files:
        shutil.copy(INPUTS[name], tmp_path / name)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHONPATH=str(ROOT))
    env.pop("GENORAY_QUIET", None)
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, f"{page}:\n{block}\n{out.stderr[-3000:]}"
    assert out.stderr == ""  # -q: nothing but the result
    header, first = out.stdout.splitlines()
    assert header.split("\t") == ["seq_id", "label", "ood_score"]  # cut -f 1-3 of the TSV's header
    seq_id, label, ood = first.split("\t")
    assert seq_id == "spl_00005" and label in {"acceptor", "donor", "none"} and float(ood) >= 0
