"""``genoray quickstart`` stopped by SIGTERM (or SIGINT, Ctrl-C) to its process group once its
store has committed (issue 30): exit 143 (130) with one line saying so, every process seen before the signal gone, and its
temp work dir and Ray temp dir removed (TMPDIR is empty again). The helpers are in
tests/batch_jobs.py."""

import shutil
import signal
import tempfile
from pathlib import Path

import pytest
from batch_jobs import assert_clean_sigterm, assert_nothing_left, signal_mid_run

pytestmark = [pytest.mark.ray, pytest.mark.chaos]


@pytest.fixture
def short_tmp():
    """A fresh TMPDIR short enough for Ray's socket paths (the job's Ray temp dir goes there)."""
    tmp = Path(tempfile.mkdtemp(prefix="gq", dir="/tmp"))
    yield tmp
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_or_sigint_stops_quickstart_and_removes_its_work_dir(short_tmp, sig):
    rc, text, seen = signal_mid_run(["quickstart", "--encoder", "kmer"], short_tmp, short_tmp, sig,
                                    pattern="genoray-quickstart-*/**/shards/*.done.json")
    if sig == signal.SIGTERM:
        assert_clean_sigterm(rc, text, "quickstart")
    else:  # Ctrl-C: the supervisor passes SIGINT on, the job stops the same way
        assert rc == 130 and "genoray quickstart: interrupted (SIGINT): stopped" in text, (rc, text[-3000:])
    assert "removed the work dir" in text
    assert_nothing_left(seen, short_tmp, text)
    assert [p.name for p in short_tmp.iterdir()] == ["stderr.txt"]  # the work dir and Ray's temp dir are gone
