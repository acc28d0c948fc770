"""Attacks from a bucket or an artifact onto a node (issue 25): a bundle is data, never code.

Each test plays the attacker who can write to a bundle root (a local directory or an S3 bucket)
or hand over an artifact, and asserts the defence: names from ``bundle.json`` and ``CURRENT``
that reach outside the version directory are refused before anything is read or written,
``CURRENT``'s ``bundle_sha256`` is checked, and an artifact never switches on
``trust_remote_code``. Every test here fails on the code before the fix (see SECURITY.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import s3
from bundles import make_bundle

from genoray.bundle import current_version, list_versions, publish, verify_bundle
from genoray.infra import fs
from genoray.infra.errors import ChecksumError
from genoray.infra.names import UnsafeNameError
from genoray.predict import Predictor

s3_server, s3_bucket = s3.s3_server, s3.s3_bucket  # the fixtures of tests/s3.py


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str]:
    """One real published bundle (k-mer encoder), copied by each test before it is tampered with."""
    base = tmp_path_factory.mktemp("attack-bundle")
    return base / "root", make_bundle(base / "w", base / "root", k=5, seed=0)


def _copy_root(built, tmp_path: Path) -> tuple[Path, str]:
    src, v = built
    root = tmp_path / "root"
    shutil.copytree(src, root)
    for p in root.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return root, v


def _edit_bundle(root: Path, v: str, edit) -> None:
    """Rewrite ``bundle.json`` of ``v`` through ``edit(doc)`` and re-point ``CURRENT`` at it with
    the matching sha256 (the attacker controls the whole root)."""
    p = root / "versions" / v / "bundle.json"
    doc = json.loads(p.read_text())
    edit(doc)
    p.write_text(json.dumps(doc))
    (root / "CURRENT").write_text(json.dumps({"version": v, "bundle_sha256": hashlib.sha256(p.read_bytes()).hexdigest()}))


def _secret(tmp_path: Path) -> tuple[Path, str]:
    """A file outside the bundle root and its sha256 (what a manifest would list to pass the check)."""
    f = tmp_path / "outside" / "secret.txt"
    f.parent.mkdir()
    f.write_bytes(b"not part of any bundle\n")
    return f, hashlib.sha256(f.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "backslash"])
def test_local_bundle_json_with_traversal_names_is_refused(built, tmp_path, kind):
    """A local ``bundle.json`` lists a file outside the version directory (absolute or ``..``),
    with that file's true sha256, or a name with a backslash (a path separator on Windows) of a
    file that is there: the old code verified and accepted all three; now verification, publish
    and the predictor refuse them with an error naming the name."""
    root, v = _copy_root(built, tmp_path)
    secret, digest = _secret(tmp_path)
    vdir = root / "versions" / v
    if kind == "absolute":
        name = str(secret)
    elif kind == "dotdot":
        name = "../../../outside/secret.txt"
        assert (vdir / name).resolve() == secret.resolve()
    else:
        name = "head\\..\\..\\evil.txt"
        (vdir / name).write_bytes(secret.read_bytes())  # on POSIX a file of that very name
    _edit_bundle(root, v, lambda doc: doc["files"].__setitem__(name, digest))
    for load in (lambda: verify_bundle(root, v), lambda: publish(root, v), lambda: Predictor.from_bundle(root)):
        with pytest.raises(UnsafeNameError) as e:
            load()
        assert repr(name) in str(e.value) and "refusing file name" in str(e.value)


def test_local_bundle_with_a_symlinked_file_is_refused(built, tmp_path):
    """``head/head.npz`` replaced by a symlink to an identical copy outside the bundle: the
    content (and so the sha256) matches, the old code followed the link and served it; now a
    symlink in a version directory is refused."""
    root, v = _copy_root(built, tmp_path)
    target = tmp_path / "outside.npz"
    npz = root / "versions" / v / "head" / "head.npz"
    shutil.copyfile(npz, target)
    npz.unlink()
    npz.symlink_to(target)
    for load in (lambda: verify_bundle(root, v), lambda: Predictor.from_bundle(root, cached=False)):
        with pytest.raises(UnsafeNameError, match="symlink") as e:
            load()
        assert "head/head.npz" in str(e.value)


def test_remote_bundle_json_with_traversal_names_writes_nothing_outside(built, s3_bucket, tmp_path):
    """A version on S3 whose ``bundle.json`` names an absolute path (and a backslash path), with
    the object uploaded at the key ``fs.join`` makes of it: the old code downloaded it to that
    absolute path on the node (a ``.pth`` in site-packages is code) and verified it there. Now
    the download refuses the names before anything is written."""
    src, v = built
    root = f"{s3_bucket}/bundles"
    target = tmp_path / "node" / "site-packages" / "evil.pth"
    payload = b"import os; os.system('echo owned')\n"
    vuri = fs.join(root, "versions", v)
    fs.upload_dir(src / "versions" / v, vuri, last=["bundle.json"])
    doc = json.loads((src / "versions" / v / "bundle.json").read_text())
    for name in (str(target), "head\\..\\..\\evil.pth"):
        fs.write_bytes(fs.join(vuri, name), payload)
        doc["files"][name] = hashlib.sha256(payload).hexdigest()
    raw = json.dumps(doc).encode()
    fs.write_bytes(fs.join(vuri, "bundle.json"), raw)
    fs.write_bytes(fs.join(root, "CURRENT"), json.dumps({"version": v, "bundle_sha256": hashlib.sha256(raw).hexdigest()}).encode())
    for load in (lambda: verify_bundle(root, v), lambda: Predictor.from_bundle(root)):
        with pytest.raises(UnsafeNameError, match="refusing file name"):
            load()
    assert not target.exists() and not target.parent.exists()
    rows = list_versions(root, verify=True)
    assert [r["verified"].split(":")[0] for r in rows] == ["UnsafeNameError"]
    assert not target.exists()
    cache = fs.cache_root() / "bundles"
    assert not [p for p in cache.rglob("*evil*")]  # nothing of it entered the node cache either


def test_download_dir_refuses_dotdot_before_writing(tmp_path):
    """``fs.download_dir`` with a listed ``..`` name writes nothing at all (the check runs over
    every name before the first download), where the old code wrote the earlier files and then
    the ``..`` one outside the destination."""
    src = tmp_path / "src" / "a" / "b"
    src.mkdir(parents=True)
    (src / "ok.txt").write_text("ok")
    (tmp_path / "src" / "a" / "escaped.txt").write_text("escaped")
    dst = tmp_path / "dst" / "x"
    with pytest.raises(UnsafeNameError, match=r"'\.\./escaped\.txt'"):
        fs.download_dir(str(src), dst, ["ok.txt", "../escaped.txt"])
    assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize("name", ["../../evil/versions/V", "/abs", "v1/../../x", "..", "v 1", "v;rm"])
def test_bad_version_names_in_current_or_flags_are_refused(built, tmp_path, name):
    """``CURRENT`` (or ``--version``) naming ``../../evil/versions/V``: the old code loaded the
    bundle of another root the attacker prepared (whose ``bundle.json`` says that very version
    name); now a version name matches ``[A-Za-z0-9._-]+`` wherever it comes from."""
    root, v = _copy_root(built, tmp_path)
    evil = tmp_path / "evil" / "versions" / "V"
    shutil.copytree(root / "versions" / v, evil)
    p = evil / "bundle.json"
    doc = json.loads(p.read_text())
    doc["version"] = name
    p.write_text(json.dumps(doc))
    (root / "CURRENT").write_text(json.dumps({"version": name, "bundle_sha256": hashlib.sha256(p.read_bytes()).hexdigest()}))
    with pytest.raises(UnsafeNameError, match="refusing version name"):
        current_version(root)
    with pytest.raises(UnsafeNameError, match="refusing version name"):
        Predictor.from_bundle(root)
    with pytest.raises(UnsafeNameError, match="refusing version name"):
        publish(root, name)  # genoray publish ROOT --version NAME
    with pytest.raises(UnsafeNameError, match="refusing version name"):
        Predictor.from_bundle(root, version=name)


def test_current_with_a_wrong_bundle_sha256_is_refused(built, tmp_path):
    """``CURRENT`` whose ``bundle_sha256`` is not that of the ``bundle.json`` it points at (an
    edited ``bundle.json``, or a hand-written ``CURRENT``): the old code never checked it."""
    root, v = _copy_root(built, tmp_path)
    (root / "CURRENT").write_text(json.dumps({"version": v, "bundle_sha256": "0" * 64}))
    with pytest.raises(ChecksumError, match="bundle_sha256") as e:
        Predictor.from_bundle(root)
    assert "bundle.json" in str(e.value) and "CURRENT" in str(e.value)
    publish(root, v)  # re-publishing records the right digest
    assert current_version(root) == v and Predictor.from_bundle(root)[1].version == v


EVIL_CODE = '''
from pathlib import Path
Path({marker!r}).write_text("the model's own code ran")
from transformers import PretrainedConfig, PreTrainedModel


class EvilConfig(PretrainedConfig):
    model_type = "genoray-evil"


class EvilModel(PreTrainedModel):
    config_class = EvilConfig
'''


def _evil_model(tmp_path: Path) -> tuple[Path, Path]:
    """A local model directory whose config maps to its own ``evil.py``, which writes a marker
    file when it is imported (what ``trust_remote_code`` would do)."""
    model, marker = tmp_path / "evil-model", tmp_path / "MARKER"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "model_type": "genoray-evil", "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}}))
    (model / "evil.py").write_text(EVIL_CODE.format(marker=str(marker)))
    return model, marker


def _hf_spec(model: Path) -> dict:
    return {"type": "hf", "version": 2, "weights_sha256": None,
            "config": {"model": str(model), "revision": None, "trust_remote_code": True, "pooling": "mean",
                       "tile_nt": 0, "overlap_nt": 32, "reverse_complement": False, "dtype": "auto", "layer": -1,
                       "local_files_only": False}}


def test_an_index_that_records_trust_remote_code_does_not_run_the_models_code(built, tmp_path, capsys, caplog):
    """An index whose encoder spec says ``trust_remote_code: true`` for a model directory with
    its own ``evil.py``: the old code switched it back on and ran that file on ``genoray
    predict``. Now the command refuses, naming the model and ``--trust-remote-code``, and the
    file never runs; only the command's own flag runs it (with a warning naming the model)."""
    from genoray.cli import main
    from genoray.encoders.hf import RemoteCodeRefused

    src, _ = built
    model, marker = _evil_model(tmp_path)
    index, head = tmp_path / "index", src.parent / "w" / "head"
    shutil.copytree(src.parent / "w" / "index", index)
    doc = json.loads((index / "manifest.json").read_text())
    doc["encoder"] = _hf_spec(model)
    (index / "manifest.json").write_text(json.dumps(doc))
    fa = src.parent / "w" / "toy.fa"

    with pytest.raises(RemoteCodeRefused) as e:
        Predictor.load(index, head)
    assert str(model) in str(e.value) and "--trust-remote-code" in str(e.value) and "evil.py" in str(e.value)
    assert main(["predict", str(fa), "--index", str(index), "--head", str(head)]) != 0
    err = capsys.readouterr().err
    assert "--trust-remote-code" in err and str(model) in err
    assert not marker.exists()

    with contextlib.suppress(Exception):  # the command's flag is what lets it run (the model itself is no model)
        Predictor.load(index, head, trust_remote_code=True)
    assert marker.exists()
    assert any("trust_remote_code is on" in r.getMessage() and str(model) in r.getMessage() for r in caplog.records)


def test_a_bundle_that_records_trust_remote_code_is_refused_by_the_predictor(built, tmp_path):
    """The same through a published bundle (what ``genoray serve`` replicas and ``reindex``
    load with :meth:`Predictor.from_bundle`): refused without the operator's flag, no code run."""
    from genoray.encoders.hf import RemoteCodeRefused
    from genoray.serving.holder import BundleHolder

    root, v = _copy_root(built, tmp_path)
    model, marker = _evil_model(tmp_path)
    vdir = root / "versions" / v
    m = vdir / "index" / "manifest.json"
    doc = json.loads(m.read_text())
    doc["encoder"] = _hf_spec(model)
    m.write_text(json.dumps(doc))

    def edit(bundle):
        bundle["encoder"] = _hf_spec(model)
        bundle["files"]["index/manifest.json"] = hashlib.sha256(m.read_bytes()).hexdigest()

    _edit_bundle(root, v, edit)
    with pytest.raises(RemoteCodeRefused, match="--trust-remote-code"):
        Predictor.from_bundle(root)
    with pytest.raises(RemoteCodeRefused, match="--trust-remote-code"):
        BundleHolder(root, poll_s=60)  # what every genoray serve replica constructs
    assert not marker.exists()


def test_trust_remote_code_for_a_hub_id_needs_a_revision():
    """A hub id's code can change under the same name: with ``trust_remote_code`` it must be
    pinned to a revision (the old code accepted any ``org/name`` and tried to fetch it)."""
    from genoray.config import HFConfig
    from genoray.encoders.hf import HFEncoder

    with pytest.raises(ValueError, match="revision"):
        HFEncoder(HFConfig(model="some-org/some-model", trust_remote_code=True))
