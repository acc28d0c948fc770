"""The README is part of the product: its Python example runs, its links resolve, it stays short
enough to read in minutes, and .ci/run runs exactly its test command."""

import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from genoray.pipeline.quickstart import bundled_dataset

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str, text: str = README) -> list[str]:
    """The fenced code blocks of ``lang`` in ``text`` (the README by default; docs pages too)."""
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_readme_is_short_and_ci_runs_its_test_command():
    assert len(README.splitlines()) <= 250
    command_2 = [line for line in _blocks("bash")[0].splitlines() if "pytest" in line]
    assert len(command_2) == 1
    assert command_2[0].strip() in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_links_resolve():
    links = re.findall(r"\]\(([^)#:]+)\)", README)
    assert links, "the README links its docs pages"
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path):
    """The 'From Python' block, on 600 records of the bundled data written as the FASTA it reads."""
    (code,) = _blocks("python")
    rows = pq.read_table(bundled_dataset(), columns=["id", "sequence", "label"]).to_pylist()
    rows = rows[:300] + rows[-300:]  # both classes
    (tmp_path / "my.fa").write_text("".join(f">{r['id']} label={r['label']}\n{r['sequence']}\n" for r in rows))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    label, rest = out.stdout.strip().splitlines()[-1].split(" ", 1)
    assert label in {"promoter", "non_promoter"}
    assert "in-distribution" in rest or "OOD" in rest
    assert (tmp_path / "py" / "head").is_dir()


def test_version_is_written_once():
    """pyproject reads the version from genoray.__version__; the citation states the same one."""
    import genoray

    assert 'dynamic = ["version"]' in (ROOT / "pyproject.toml").read_text()
    assert f"version: {genoray.__version__}" in (ROOT / "CITATION.cff").read_text()
    assert f"({genoray.__version__})" in (ROOT / "CHANGELOG.md").read_text()
