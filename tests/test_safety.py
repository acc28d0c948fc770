"""Static guard: the package never loads pickles or runs remote code by default."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "genoray"


def calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_no_unsafe_loaders():
    problems = []
    for path in PKG.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("pickle", "joblib", "cloudpickle", "dill") for n in names):
                    problems.append(f"{path.name}: imports {names}")
        for node, name in calls(tree):
            kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if name.endswith("torch.load") and kw.get("weights_only") != "True":
                problems.append(f"{path.name}:{node.lineno} torch.load without weights_only=True")
            if name.endswith("np.load") and kw.get("allow_pickle") != "False":
                problems.append(f"{path.name}:{node.lineno} np.load without allow_pickle=False")
            if kw.get("trust_remote_code") == "True":
                problems.append(f"{path.name}:{node.lineno} trust_remote_code=True hard-coded")
            if name.endswith("yaml.load"):
                problems.append(f"{path.name}:{node.lineno} yaml.load (use safe_load)")
    assert problems == []


def test_write_npz_refuses_object_arrays(tmp_path):
    import numpy as np
    import pytest

    from genoray.infra.artifacts import write_npz

    with pytest.raises(TypeError, match="pickle"):
        write_npz(tmp_path / "x.npz", a=np.array([{"x": 1}], dtype=object))


def test_object_npz_is_refused_at_load(tmp_path):
    import numpy as np
    import pytest

    from genoray.infra.artifacts import read_npz

    np.savez(tmp_path / "evil.npz", a=np.array([{"x": 1}], dtype=object))  # would need pickle to load
    with pytest.raises(ValueError, match="pickle"):
        read_npz(tmp_path / "evil.npz")
