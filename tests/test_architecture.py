"""The package tree is the pipeline: imports point down (function-level imports included), every
artifact file name has one owner module, modules stay small, and the public API is documented."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "genoray"
# the layer order of pyproject.toml's import-linter contract, lowest first
LAYERS = ["infra", "config", "sequences", "encoders", "embedding", "index", "heads", "scoring", "bundle", "predict",
          "serving|evaluation", "pipeline", "cli"]
# every artifact file name, and the one module that reads and writes it
OWNERS = {
    "store.json": "embedding/store.py", "encoder.json": "embedding/store.py", "verified.json": "embedding/store.py",
    "manifest.json": "index/manifest.py", "trained.faiss": "index/manifest.py", "trained.json": "index/manifest.py",
    "head.json": "heads/persist.py", "head.npz": "heads/persist.py", "trees.ubj": "heads/persist.py",
    "length_calibration.json": "heads/length_calibration.py", "ood.json": "scoring/ood.py", "ood.npz": "scoring/ood.py",
    "priors.json": "scoring/priors.py", "normalizer.json": "scoring/adapt.py", "normalizer.npz": "scoring/adapt.py",
    "bundle.json": "bundle/manifest.py", "CURRENT": "bundle/manifest.py", "gate.json": "pipeline/reindex.py",
    "report.json": "evaluation/study.py", "report.md": "evaluation/study.py",
    "report.html": "evaluation/html.py", "evaluation.json": "evaluation/html.py", "shift.json": "evaluation/html.py",
}
SUFFIX_OWNERS = {".done.json": {"embedding/shards.py", "index/stages.py"}}  # a unit's and a partition's marker


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the genoray modules it imports, at any depth of the file (functions included)."""
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        is_pkg = p.name == "__init__.py"
        for n in ast.walk(ast.parse(p.read_text())):
            names: list[str] = []
            if isinstance(n, ast.Import):
                names = [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom):
                base = n.module or ""
                if n.level:
                    pkg = m.split(".") if is_pkg else m.split(".")[:-1]
                    base = ".".join(pkg[: len(pkg) - n.level + 1] + ([n.module] if n.module else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in n.names]
            for name in names:
                while name and name not in mods:
                    name = name.rpartition(".")[0]
                if name and name != m:
                    edges[m].add(name)
    return edges


def test_the_import_graph_has_no_cycle_with_function_level_imports():
    edges = _imports(_modules())
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    assert cycles == []


def test_imports_point_down_the_layers():
    """The same rule import-linter checks in .ci/run, with this test's own graph (so a reader
    of either sees the same order)."""
    rank = {name: i for i, layer in enumerate(LAYERS) for name in layer.split("|")}
    bad = []
    for m, targets in _imports(_modules()).items():
        top = m.split(".")[1] if m.count(".") else None
        for t in targets:
            tt = t.split(".")[1] if t.count(".") else None
            if top in rank and tt in rank and top != tt and rank[tt] >= rank[top]:
                bad.append(f"{m} -> {t}")
    assert bad == []


def test_import_linter_reads_function_level_imports():
    """A circle hidden inside a function would break a contract: grimp (import-linter's graph)
    must see imports made inside functions. ``genoray.cli.commands`` imports the quickstart only
    when the command runs."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("genoray", cache_dir=None)
    assert graph.direct_import_exists(importer="genoray.cli.commands", imported="genoray.pipeline.quickstart")


def test_a_function_level_genoray_import_says_why():
    """Imports inside functions only defer a heavy library, and say which (``# lazy: <why>``)."""
    silent = []
    for p in PKG.rglob("*.py"):
        lines = p.read_text().split("\n")
        for fn in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for n in ast.walk(fn):
                    if isinstance(n, (ast.Import, ast.ImportFrom)):
                        mod = n.module if isinstance(n, ast.ImportFrom) else n.names[0].name
                        if mod and mod.split(".")[0] == "genoray" and "# lazy:" not in lines[n.lineno - 1]:
                            silent.append(f"{p.relative_to(PKG)}:{n.lineno}")
    assert silent == []


def test_the_top_level_is_small_and_no_module_is_long():
    plain = [p.name for p in PKG.glob("*.py") if p.name != "__init__.py"]
    assert len(plain) <= 8, plain
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 450}
    assert long == {}


def _string_constants(tree: ast.AST) -> list[ast.Constant]:
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def test_every_artifact_file_name_is_written_in_its_owner_only():
    strays = []
    for p in PKG.rglob("*.py"):
        rel = str(p.relative_to(PKG))
        for c in _string_constants(ast.parse(p.read_text())):
            if c.value in OWNERS and OWNERS[c.value] != rel:
                strays.append(f"{rel}:{c.lineno} {c.value!r} (owner {OWNERS[c.value]})")
            for suffix, owners in SUFFIX_OWNERS.items():
                if c.value.endswith(suffix) and rel not in owners:
                    strays.append(f"{rel}:{c.lineno} {c.value!r}")
    assert strays == []


def test_public_docstrings_cover_the_api():
    script = PKG.parent / "bench" / "docstring_coverage.py"
    out = subprocess.run([sys.executable, str(script), str(PKG), "--min", "0.95"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
