"""A local Ray under any TMPDIR: genoray's temp dir for Ray stays within AF_UNIX's socket path
limit (a long TMPDIR, as on a cluster's scratch space, gets a short root of genoray's)."""

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import toy_fasta

from genoray.infra import runtime
from genoray.infra.runtime import RAY_SOCKET_TAIL, SOCKET_PATH_MAX, ray_temp_dir

ROOT = Path(__file__).resolve().parents[1]


def long_dir(length: int = 100) -> Path:
    """A fresh directory whose path is exactly ``length`` characters, under /tmp."""
    base = Path(tempfile.mkdtemp(prefix="gl", dir="/tmp"))
    path = base / ("x" * (length - len(str(base)) - 1))
    path.mkdir()
    assert len(str(path)) == length
    return path


@pytest.fixture
def short_tmp():
    d = tempfile.mkdtemp(prefix="g", dir="/tmp")  # /tmp/gXXXXXXXX: 14 characters
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def with_tmpdir(monkeypatch, path: Path) -> None:
    monkeypatch.setenv("TMPDIR", str(path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # tempfile caches the temp dir


def test_short_tmpdir_is_used_as_is(monkeypatch, caplog, short_tmp):
    with_tmpdir(monkeypatch, short_tmp)
    with caplog.at_level(logging.INFO, logger="genoray.infra.runtime"):
        path = Path(ray_temp_dir())
    assert path.parent == short_tmp and path.name.startswith("gr-ray-") and path.is_dir()
    assert caplog.records == []
    assert len(str(path)) + RAY_SOCKET_TAIL <= SOCKET_PATH_MAX


def test_100_char_tmpdir_gets_a_short_root(monkeypatch, caplog):
    long = long_dir(100)
    with_tmpdir(monkeypatch, long)
    try:
        with caplog.at_level(logging.INFO, logger="genoray.infra.runtime"):
            path = Path(ray_temp_dir(prefix="rc-"))
        assert path.parent == Path("/tmp") and path.name.startswith("rc-") and path.is_dir()
        assert oct(path.stat().st_mode & 0o777) == oct(0o700)  # mkdtemp's: only this user, until Ray opens it
        assert len(str(path)) + RAY_SOCKET_TAIL <= SOCKET_PATH_MAX
        assert [r.levelno for r in caplog.records] == [logging.INFO]
        assert str(path) in caplog.text and str(long) in caplog.text
        path.rmdir()
    finally:
        shutil.rmtree(long.parent, ignore_errors=True)


def test_falls_back_to_the_next_root_and_says_what_to_do_when_none_fits(monkeypatch, tmp_path):
    long = long_dir(100)
    with_tmpdir(monkeypatch, long)
    try:
        monkeypatch.setattr(runtime, "SHORT_ROOTS", ("/nonexistent-gr", "/dev/shm"))
        if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
            path = Path(ray_temp_dir())
            assert path.parent == Path("/dev/shm")
            path.rmdir()
        monkeypatch.setattr(runtime, "SHORT_ROOTS", ("/nonexistent-gr",))
        with pytest.raises(OSError, match=r"no temp dir for Ray's sockets: TMPDIR=/tmp/gl.* set TMPDIR to a "
                                          r"writable directory of at most 16 characters"):
            ray_temp_dir()
    finally:
        shutil.rmtree(long.parent, ignore_errors=True)


@pytest.mark.ray
def test_embed_starts_a_local_ray_under_a_100_char_tmpdir(tmp_path):
    """A real ``genoray embed`` process, whose Ray is started by genoray's runtime, under a
    100-character TMPDIR: it exits 0, writes every record read, and leaves no Ray temp dir."""
    fasta = toy_fasta(tmp_path / "tiny.fa", n=12)
    long = long_dir(100)
    before = {p.name for p in Path("/tmp").iterdir() if p.name.startswith("gr-ray-")}
    env = {**os.environ, "TMPDIR": str(long), "RAY_AUTH_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("RAY_ADDRESS", None)
    try:
        p = subprocess.run([sys.executable, "-m", "genoray.cli", "-v", "embed", str(fasta), "--out",
                            str(tmp_path / "store")], capture_output=True, text=True, env=env, timeout=300,
                           check=False)
        assert p.returncode == 0, p.stderr[-3000:]
        summary = json.loads(p.stdout)
        assert summary["status"] == "complete" and summary["read"] == summary["written"] == 12
        assert "Ray's temp dir is /tmp/gr-ray-" in p.stderr  # the short root, said at INFO (-v)
        assert list(long.iterdir()) == []  # nothing of Ray's under the long TMPDIR
        after = {p.name for p in Path("/tmp").iterdir() if p.name.startswith("gr-ray-")}
        chosen = p.stderr.split("Ray's temp dir is /tmp/")[1].split(":")[0]
        assert chosen not in after and chosen not in before  # removed at exit
    finally:
        shutil.rmtree(long.parent, ignore_errors=True)


@pytest.mark.ray
def test_quickstart_runs_under_a_100_char_tmpdir():
    """``genoray quickstart --encoder kmer`` (bundled data, local Ray) under a 100-character
    TMPDIR: exit 0 and a report, where it used to fail on Ray's socket path length."""
    long = long_dir(100)
    env = {**os.environ, "TMPDIR": str(long), "RAY_AUTH_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("RAY_ADDRESS", None)
    try:
        p = subprocess.run([sys.executable, "-m", "genoray.cli", "quickstart", "--encoder", "kmer", "--json"],
                           capture_output=True, text=True, env=env, timeout=600, check=False)
        assert p.returncode == 0, p.stderr[-3000:]
        records = json.loads(p.stdout)["runs"][0]["records"]
        assert "AF_UNIX" not in p.stderr and records["read"] == records["written"] == 5719  # the bundled data
        assert list(long.iterdir()) == []  # the work dir and Ray's temp dir are gone
    finally:
        shutil.rmtree(long.parent, ignore_errors=True)


def test_a_stop_that_python_drops_in_a_del_is_raised_again():
    """A Ctrl-C whose KeyboardInterrupt lands in a ``__del__`` (Ray Data's iterator shuts its
    executor down there, right after an embed's last unit) is printed and dropped by Python; the
    job then ran to the end and exited 0 (seen once in CI). The stop is raised again when
    :func:`stop_on_signals` ends (and between stages), so the command still exits 130."""
    import signal

    from genoray.infra.stopping import STOPPED, raise_if_stopped, stop_on_signals

    ran_on = []

    class SignalledInTeardown:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)  # the handler raises inside __del__: dropped
            for _ in range(1000):  # let the handler run here, inside __del__
                pass

    with pytest.raises(KeyboardInterrupt):
        with stop_on_signals():
            SignalledInTeardown()  # freed at once
            ran_on.append("after the dropped interrupt")
    assert ran_on == ["after the dropped interrupt"] and STOPPED == [signal.SIGINT]
    STOPPED.clear()
    raise_if_stopped()  # nothing received: a no-op
