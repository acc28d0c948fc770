"""Long batch commands stopped as schedulers stop them (issue 30): SIGTERM to the process group
of ``genoray embed`` / ``genoray reindex`` mid-run, as ``timeout``, systemd, Kubernetes and Slurm
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
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import pytest

from genoray.embedding.store import EmbeddingStore
from genoray.infra.runtime import KEPT_MARKER, sweep_dead_ray_dirs

pytestmark = [pytest.mark.ray, pytest.mark.chaos]
FILES, PER_FILE, LENGTH = 40, 500, 200  # 40 units of 500 records: a few seconds of embedding on 2 cores
START_S = 180  # until the first unit commits: Ray's start on 2 busy cores (usually 15-30 s)
STOP_S = 30  # SIGTERM to exit: the units in flight are abandoned, Ray is shut down
ROOT = Path(__file__).resolve().parents[1]


def corpus(directory: Path, seed: int = 0) -> list[str]:
    """FILES FASTA files of PER_FILE labeled random records (every 5th in the test split); their ids."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"ACGT", dtype=np.uint8)
    ids = []
    for f in range(FILES):
        seqs = letters[rng.integers(0, 4, size=(PER_FILE, LENGTH))]
        with open(directory / f"part{f:02d}.fa", "w") as out:
            for i in range(PER_FILE):
                sid = f"r{f}_{i}"
                ids.append(sid)
                out.write(f">{sid} label={'ab'[(f + i) % 2]} split={'test' if i % 5 == 0 else 'train'}\n"
                          f"{seqs[i].tobytes().decode()}\n")
    return ids


@pytest.fixture
def short_tmp():
    """A fresh TMPDIR short enough for Ray's socket paths (the job's Ray temp dir goes there)."""
    tmp = Path(tempfile.mkdtemp(prefix="gb", dir="/tmp"))
    yield tmp
    shutil.rmtree(tmp, ignore_errors=True)


def env_for(tmp: Path) -> dict[str, str]:
    env = {**os.environ, "TMPDIR": str(tmp), "RAY_AUTH_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("RAY_ADDRESS", None)
    return env


def ray_dirs(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith("gr-ray-"))


def signal_mid_run(argv: list[str], shards: Path, tmp: Path, sig: int) -> tuple[int | None, str, list]:
    """Start ``genoray argv`` in its own process group; once its first unit is committed (a done
    marker under ``shards``), send ``sig`` to the group. Returns the exit status (``None``: still
    running after STOP_S), stderr and the processes seen just before the signal."""
    err = tmp / "stderr.txt"
    with open(err, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "genoray.cli", *argv], env=env_for(tmp),
                                stdout=subprocess.DEVNULL, stderr=f, start_new_session=True)
    try:
        t0 = time.time()
        while not list(shards.glob("*.done.json")):
            assert proc.poll() is None, f"exited {proc.returncode} before a unit committed: {err.read_text()[-3000:]}"
            assert time.time() - t0 < START_S, f"no unit committed within {START_S} s: {err.read_text()[-3000:]}"
            time.sleep(0.1)
        root = psutil.Process(proc.pid)
        seen = [root, *root.children(recursive=True)]
        assert any("raylet" in p.name() for p in seen), [p.name() for p in seen]  # Ray really runs
        os.killpg(proc.pid, sig)
        try:
            rc = proc.wait(STOP_S)
        except subprocess.TimeoutExpired:
            rc = None
        return rc, err.read_text(), seen
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def assert_nothing_left(seen: list, tmp: Path, text: str) -> None:
    """Every process seen before the signal is gone within 10 s, and no Ray temp dir is left."""
    deadline = time.time() + 10
    while True:
        alive = [p for p in seen if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive and not ray_dirs(tmp):
            return
        if time.time() > deadline:
            raise AssertionError(f"left behind: {[(p.pid, p.name()) for p in alive]}, {ray_dirs(tmp)}\n{text[-2000:]}")
        time.sleep(0.2)


def assert_clean_sigterm(rc, text: str, command: str) -> None:
    assert rc == 143, f"exit {rc}: {text[-3000:]}"
    assert f"genoray {command}: SIGTERM: stopped" in text, text[-3000:]
    assert "SIGTERM received" not in text and "Aborted" not in text, text[-3000:]  # Ray's native handler


def assert_every_record_once(store: Path, ids: list[str]) -> None:
    stored = EmbeddingStore(store).load().ids
    counts = Counter(stored)
    assert len(stored) == len(ids) and counts == Counter(ids), (len(stored), len(ids), counts.most_common(2))


def test_sigterm_stops_embed_cleanly_and_a_rerun_writes_every_record_once(tmp_path, short_tmp):
    ids = corpus(tmp_path / "in")
    store = tmp_path / "store"
    argv = ["embed", str(tmp_path / "in"), "--out", str(store)]
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


def test_sigterm_stops_reindex_cleanly_and_a_rerun_publishes_every_record_once(tmp_path, short_tmp):
    from genoray.bundle import current_version

    ids = corpus(tmp_path / "in", seed=1)
    work, bundles = tmp_path / "work", tmp_path / "bundles"
    argv = ["reindex", str(tmp_path / "in"), "--work", str(work), "--bundles", str(bundles)]
    rc, text, seen = signal_mid_run(argv, work / "store" / "shards", short_tmp, signal.SIGTERM)
    assert_clean_sigterm(rc, text, "reindex")
    assert_nothing_left(seen, short_tmp, text)
    assert current_version(bundles) is None  # nothing published by the stopped night
    committed = len(list((work / "store" / "shards").glob("*.done.json")))
    assert 1 <= committed < FILES, committed
    again = subprocess.run([sys.executable, "-m", "genoray.cli", *argv], env=env_for(short_tmp), capture_output=True,
                           text=True, timeout=400, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    report = json.loads(again.stdout)
    assert report["published"] and current_version(bundles) == report["version"]
    assert report["embed"]["units_skipped"] == committed and report["embed"]["written"] == FILES * PER_FILE
    assert_every_record_once(work / "store", ids)
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
