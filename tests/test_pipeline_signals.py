"""``genoray quickstart`` and ``genoray index --ray`` stopped by a signal to their process group
(issue 30). quickstart, SIGTERM or SIGINT (Ctrl-C) once its store has committed: exit 143 (130)
with one line saying so, every process seen before the signal gone, and its temp work dir and
Ray temp dir removed (TMPDIR is empty again). index --ray, SIGTERM while its Ray is starting
(``ray.init``, whose own handler would exit 15): exit 143, nothing left, no index written. The
helpers are in tests/batch_jobs.py."""

import signal
import subprocess
import sys

import pytest
from batch_jobs import FILES, PER_FILE, assert_clean_sigterm, assert_nothing_left, corpus, env_for, signal_mid_run

pytestmark = [pytest.mark.ray, pytest.mark.chaos]



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


def test_sigterm_while_index_ray_starts_stops_cleanly(tmp_path, short_tmp):
    corpus(tmp_path / "in", seed=3)
    store = tmp_path / "store"
    made = subprocess.run([sys.executable, "-m", "genoray.cli", "embed", str(tmp_path / "in"), "--out", str(store),
                           "--no-ray"], env=env_for(short_tmp), capture_output=True, text=True, timeout=300, check=False)
    assert made.returncode == 0 and f'"written": {FILES * PER_FILE}' in made.stdout, made.stderr[-3000:]
    rc, text, seen = signal_mid_run(["index", str(store), "--out", str(tmp_path / "index"), "--ray"], None, short_tmp,
                                    signal.SIGTERM)
    assert_clean_sigterm(rc, text, "index")
    assert_nothing_left(seen, short_tmp, text)
    assert not (tmp_path / "index").exists() or not any((tmp_path / "index").iterdir())
