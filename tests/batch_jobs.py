"""Helpers of the batch-job signal tests (tests/test_batch_signals.py, tests/test_reindex_signals.py):
a corpus of many small units, a ``genoray`` job started in its own process group and signalled
once its first unit has committed, and the checks after the stop."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil

from genoray.embedding.store import EmbeddingStore

FILES, PER_FILE, LENGTH = 40, 500, 200  # 40 units of 500 records: a few seconds of embedding on 2 cores
START_S = 180  # until the first unit commits: Ray's start on 2 busy cores (usually 15-30 s)
STOP_S = 30  # SIGTERM to exit: the units in flight are abandoned, Ray is shut down
ROOT = Path(__file__).resolve().parents[1]


def corpus(directory: Path, seed: int = 0, files: int = FILES, per_file: int = PER_FILE) -> list[str]:
    """``files`` FASTA files of ``per_file`` labeled random records (every 5th in the test split); their ids."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"ACGT", dtype=np.uint8)
    ids = []
    for f in range(files):
        seqs = letters[rng.integers(0, 4, size=(per_file, LENGTH))]
        with open(directory / f"part{f:02d}.fa", "w") as out:
            for i in range(per_file):
                sid = f"r{f}_{i}"
                ids.append(sid)
                out.write(f">{sid} label={'ab'[(f + i) % 2]} split={'test' if i % 5 == 0 else 'train'}\n"
                          f"{seqs[i].tobytes().decode()}\n")
    return ids


def env_for(tmp: Path) -> dict[str, str]:
    env = {**os.environ, "TMPDIR": str(tmp), "RAY_AUTH_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("RAY_ADDRESS", None)
    return env


def ray_dirs(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith("gr-ray-"))


def raylet_started(proc: subprocess.Popen) -> bool:
    """Whether a raylet runs among ``proc``'s descendants (its Ray is starting: ``ray.init`` runs)."""
    try:
        return any("raylet" in p.name() for p in psutil.Process(proc.pid).children(recursive=True))
    except psutil.Error:
        return False


def signal_mid_run(argv: list[str], shards: Path | None, tmp: Path, sig: int,
                   pattern: str = "*.done.json") -> tuple[int | None, str, list]:
    """Start ``genoray argv`` in its own process group; once its first unit is committed (a done
    marker under ``shards``, ``pattern``; ``shards=None``: once its raylet runs), send ``sig`` to the
    group. Returns the exit status (``None``: still running after STOP_S), stderr and the processes
    seen just before the signal."""
    err = tmp / "stderr.txt"
    with open(err, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "genoray.cli", *argv], env=env_for(tmp),
                                stdout=subprocess.DEVNULL, stderr=f, start_new_session=True)
    try:
        t0 = time.time()
        while not (raylet_started(proc) if shards is None else list(shards.glob(pattern))):
            assert proc.poll() is None, f"exited {proc.returncode} too early: {err.read_text()[-3000:]}"
            assert time.time() - t0 < START_S, f"not started within {START_S} s: {err.read_text()[-3000:]}"
            time.sleep(0.05)
        root = psutil.Process(proc.pid)
        seen = [root, *root.children(recursive=True)]
        if "--no-ray" not in argv:
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
