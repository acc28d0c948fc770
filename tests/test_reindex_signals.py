"""``genoray reindex`` stopped by SIGTERM to its process group mid-run (issue 30), as a
scheduler's ``timeout`` or a Kubernetes CronJob's deadline stops it: exit 143, nothing left
running, nothing published; the next run resumes the store (the units committed before the
signal are skipped) and publishes a bundle whose store holds every input record exactly once.
The helpers are in tests/batch_jobs.py."""

import json
import signal
import subprocess
import sys

import pytest
from batch_jobs import (
    assert_clean_sigterm,
    assert_every_record_once,
    assert_nothing_left,
    corpus,
    env_for,
    ray_dirs,
    signal_mid_run,
)

from genoray.bundle import current_version

pytestmark = [pytest.mark.ray, pytest.mark.chaos]
FILES, PER_FILE = 24, 250  # fewer records than the embed test's: the rerun also indexes, trains and gates



def test_sigterm_stops_reindex_cleanly_and_a_rerun_publishes_every_record_once(tmp_path, short_tmp):
    ids = corpus(tmp_path / "in", seed=1, files=FILES, per_file=PER_FILE)
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
