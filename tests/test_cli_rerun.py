"""A re-run into an index or head directory made from other inputs or settings is refused and
keeps the old artifact byte-identical; ``--overwrite`` replaces it (genoray.infra.rerun)."""

from __future__ import annotations

import json

import pytest

from genoray.cli import commands as cli
from tests.test_cli import toy_table


def _snapshot(d):
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def stores(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _run(capsys, "embed", toy_table(tmp_path / "a.parquet", seed=0), "--out", a, "--no-ray")[0] == 0
    assert _run(capsys, "embed", toy_table(tmp_path / "b.parquet", seed=1), "--out", b, "--no-ray")[0] == 0
    return a, b


def test_index_and_train_refuse_other_inputs_keep_the_old_and_overwrite_replaces(tmp_path, capsys, stores):
    a, b = stores
    ix, head = tmp_path / "ix", tmp_path / "head"
    assert _run(capsys, "index", a, "--out", ix)[0] == 0
    before = _snapshot(ix)
    # another store, other settings: refused, every file kept as it was
    for argv, what in (([b, "--out", ix], f"store: '{a}' then, '{b}' now"),
                       ([a, "--out", ix, "--index-seed", "3"], "seed: 0 then, 3 now"),
                       ([a, "--out", ix, "--train-split", "all"], "split: 'train' then, None now")):
        rc, _, err = _run(capsys, "index", *argv)
        assert rc == 2, err
        assert err.startswith(f"genoray index: error: {ix}: its index was made from other inputs or settings (")
        assert what in err and "nothing was changed: give --overwrite to replace it, or a new --out" in err
        assert _snapshot(ix) == before
    # the same store and settings: as before (a complete index is never edited in place)
    rc, _, err = _run(capsys, "index", a, "--out", ix, "--add-cpus", "1")
    assert rc == 2 and "an index already exists here; indexes are never edited in place" in err
    assert _snapshot(ix) == before
    # --overwrite: replaced by an index of the other settings
    rc, out, _ = _run(capsys, "index", a, "--out", ix, "--train-split", "all", "--overwrite")
    assert rc == 0 and json.loads(out)["ntotal"] == 80
    assert json.loads((ix / "manifest.json").read_text())["ntotal"] == 80

    # train: the same rules for a head directory
    rc, _, err = _run(capsys, "train", a, "--index", ix, "--out", head)
    assert rc == 0, err
    before = _snapshot(head)
    rc, _, err = _run(capsys, "train", a, "--index", ix, "--out", head, "--head-seed", "2")
    assert rc == 2 and f"genoray train: error: {head}: its head was made from other inputs or settings (seed: 0 " \
                       "then, 2 now); nothing was changed: give --overwrite" in err
    assert _snapshot(head) == before
    rc, _, err = _run(capsys, "train", a, "--index", ix, "--out", head)
    assert rc == 2 and "a head already exists here" in err and _snapshot(head) == before
    rc, _, err = _run(capsys, "train", a, "--index", ix, "--out", head, "--head-seed", "2", "--overwrite")
    assert rc == 0, err
    assert _snapshot(head) != before and json.loads((head / "inputs.json").read_text())["settings"]["seed"] == 2


def test_an_index_without_a_record_keeps_the_old_rules(tmp_path, capsys, stores):
    """An index an older genoray wrote (no inputs.json) is still never edited in place;
    ``--overwrite`` replaces it and records what the new one is made from."""
    a, b = stores
    d = tmp_path / "old"
    assert _run(capsys, "index", a, "--out", d)[0] == 0
    (d / "inputs.json").unlink()
    before = _snapshot(d)
    rc, _, err = _run(capsys, "index", b, "--out", d)
    assert rc == 2 and f"{d}: an index already exists here; indexes are never edited in place" in err
    assert _snapshot(d) == before
    assert _run(capsys, "index", b, "--out", d, "--overwrite")[0] == 0
    assert json.loads((d / "inputs.json").read_text())["sources"] == {"store": str(b.resolve())}
