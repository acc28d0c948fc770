"""Public docstring coverage of a package, by an AST count (no import).

Counted: module-level functions and classes whose names do not start with ``_``, and the
methods (properties included) of those classes whose names do not start with ``_`` (so
``__init__`` and other dunders are not counted). Nested functions and members of private
classes are not public and not counted. Overloads count like any other definition.

    python bench/docstring_coverage.py [genoray] [--min 0.9] [--list]

Prints ``documented/total = ratio`` and, with ``--list``, every undocumented name; exits 1
when the ratio is below ``--min``.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path


def public_defs(tree: ast.Module) -> list[tuple[str, bool]]:
    """``(qualified name, has docstring)`` of every public definition of one module."""
    out: list[tuple[str, bool]] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            out.append((node.name, ast.get_docstring(node) is not None))
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not item.name.startswith("_"):
                        out.append((f"{node.name}.{item.name}", ast.get_docstring(item) is not None))
    return out


def coverage(root: Path) -> tuple[int, int, list[str]]:
    """``(documented, total, undocumented names)`` over every ``.py`` file under ``root``."""
    documented, total, missing = 0, 0, []
    for path in sorted(root.rglob("*.py")):
        for name, has_doc in public_defs(ast.parse(path.read_text(), filename=str(path))):
            total += 1
            documented += has_doc
            if not has_doc:
                missing.append(f"{path}:{name}")
    return documented, total, missing


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("package", nargs="?", default=str(Path(__file__).resolve().parents[1] / "genoray"))
    ap.add_argument("--min", type=float, default=0.0, help="exit 1 below this ratio")
    ap.add_argument("--list", action="store_true", help="print the undocumented names")
    args = ap.parse_args()
    documented, total, missing = coverage(Path(args.package))
    ratio = documented / total if total else 1.0
    if args.list:
        print("\n".join(missing))
    print(f"public docstrings: {documented}/{total} = {ratio:.3f}")
    return 0 if ratio >= args.min else 1


if __name__ == "__main__":
    sys.exit(main())
