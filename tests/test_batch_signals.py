"""Long batch commands stopped as schedulers stop them (issue 30): SIGTERM to the process group
of ``genoray embed`` mid-run (on its local Ray, and with ``--no-ray`` in one process;
``genoray reindex``: tests/test_reindex_signals.py), as ``timeout``, systemd, Kubernetes and Slurm
send it, and SIGKILL.

Each job runs as a user starts it (``python -m genoray.cli``, its own process group, its own
local Ray, a fresh short TMPDIR). SIGTERM: exit 143 within the timeout with one line saying so
(never Ray's native stack dump and abort, exit 134, as before), every process seen before the
signal gone, no Ray temp dir left; a rerun of the same command exits 0 with every input record
written exactly once (the ids compared with the input's) and the units committed before the
signal skipped. SIGKILL of the process group: the watchdog kills what is left and removes the
Ray temp dir. A start removes the Ray temp dirs of dead sessions, and only those
(:func:`genoray.infra.runtime.sweep_dead_ray_dirs`)."""

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
from batch_jobs import (
    FILES,
    PER_FILE,
    assert_clean_sigterm,
    assert_every_record_once,
    assert_nothing_left,
    corpus,
    env_for,
    ray_dirs,
    signal_mid_run,
)

from genoray.infra.runtime import KEPT_MARKER, sweep_dead_ray_dirs

pytestmark = [pytest.mark.ray, pytest.mark.chaos]



@pytest.mark.parametrize("ray", [True, False], ids=["ray", "no-ray"])
def test_sigterm_stops_embed_cleanly_and_a_rerun_writes_every_record_once(tmp_path, short_tmp, ray):
    ids = corpus(tmp_path / "in")
    store = tmp_path / "store"
    argv = ["embed", str(tmp_path / "in"), "--out", str(store), *([] if ray else ["--no-ray"])]
    rc, text, seen = signal_mid_run(argv, store / "shards", short_tmp, signal.SIGTERM)
    assert_clean_sigterm(rc, text, "embed")
    assert_nothing_left(seen, short_tmp, text)
    committed = len(list((store / "shards").glob("*.done.json")))
    assert 1 <= committed < FILES, committed  # stopped mid-run
    again = subprocess.run([sys.executable, "-m", "genoray.cli", *argv], env=env_for(short_tmp), capture_output=True,
                           text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    report = json.loads(again.stdout)
    assert report["status"] == "complete" and report["units"] == FILES and report["units_skipped"] == committed
    assert report["read"] == report["written"] == FILES * PER_FILE
    assert_every_record_once(store, ids)
    assert ray_dirs(short_tmp) == []


def test_sigkill_of_embed_leaves_no_process_and_no_ray_temp_dir(tmp_path, short_tmp):
    corpus(tmp_path / "in", seed=2)
    argv = ["embed", str(tmp_path / "in"), "--out", str(tmp_path / "store")]
    rc, text, seen = signal_mid_run(argv, tmp_path / "store" / "shards", short_tmp, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert_nothing_left(seen, short_tmp, text)  # the watchdog killed Ray and swept its temp dir


def fake_ray_dir(root: Path, name: str, pid: int | None, kept: bool = False) -> Path:
    d = root / name
    d.mkdir()
    if pid is not None:
        (d / f"session_2026-12-05_10-00-00_123456_{pid}" / "sockets").mkdir(parents=True)
        (d / "session_latest").symlink_to(d / f"session_2026-12-05_10-00-00_123456_{pid}")
    if kept:
        (d / KEPT_MARKER).touch()
    return d


def test_a_start_sweeps_only_the_ray_temp_dirs_of_dead_sessions(short_tmp, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(short_tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # tempfile caches the temp dir
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead = int(done.stdout)  # exited and reaped: no process has this id (until it is recycled)
    assert not psutil.pid_exists(dead)
    gone = fake_ray_dir(short_tmp, "gr-ray-deadaaaa", dead)
    live = fake_ray_dir(short_tmp, "gr-ray-liveaaaa", os.getpid())
    starting = fake_ray_dir(short_tmp, "gr-ray-newaaaaa", None)  # made, Ray not started yet
    kept = fake_ray_dir(short_tmp, "gr-ray-keptaaaa", dead, kept=True)  # --keep
    other = fake_ray_dir(short_tmp, "ray-deadaaaaaaa", dead)  # another prefix
    (short_tmp / "gr-ray-linkaaaa").symlink_to(other)  # a link is never followed
    from genoray.infra.runtime import ray_temp_dir

    fresh = Path(ray_temp_dir())  # a start sweeps first
    assert not gone.exists() and fresh.is_dir()
    assert live.is_dir() and starting.is_dir() and kept.is_dir() and other.is_dir()
    assert (short_tmp / "gr-ray-linkaaaa").is_symlink()
    assert sweep_dead_ray_dirs() == []  # nothing else qualifies
