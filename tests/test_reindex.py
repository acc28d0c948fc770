"""The nightly reindex: only new files embedded, gate, publish, refusal keeps CURRENT."""

import json

from conftest import toy_fasta

from genoray.bundle import current_version
from genoray.cli import main
from genoray.config import IndexConfig
from genoray.encoders.kmer import KmerEncoder
from genoray.pipeline.reindex import ReindexConfig, reindex


def night(path, seed, n=150, flip=False):
    """One night's toy batch (``flip``: its training labels are swapped)."""
    return toy_fasta(path, n=n, seed=seed, prefix=f"n{seed}_", flip_train=flip)


def test_nightly_reindex_publishes_then_gates(tmp_path):
    d1 = night(tmp_path / "day1.fa", 1)
    r1 = reindex([d1], tmp_path / "work", tmp_path / "bundles", KmerEncoder(), use_ray=False)
    assert r1.published and current_version(tmp_path / "bundles") == r1.version
    assert r1.gate["current"] is None and r1.embed["written"] == 150
    d2 = night(tmp_path / "day2.fa", 2)
    r2 = reindex([d1, d2], tmp_path / "work", tmp_path / "bundles", KmerEncoder(), use_ray=False)
    assert r2.published and r2.embed["units_skipped"] == 1 and r2.embed["written"] == 300  # only day2 embedded
    assert r2.gate["current"]["version"] == r1.version and r2.gate["current"]["comparable"]
    assert r2.gate["ntotal"] == 240
    # a night of mislabeled data: held-out accuracy collapses, the gate refuses, CURRENT stays
    d3 = night(tmp_path / "day3.fa", 3, n=600, flip=True)
    r3 = reindex([d1, d2, d3], tmp_path / "work", tmp_path / "bundles", KmerEncoder(), use_ray=False)
    assert not r3.published and current_version(tmp_path / "bundles") == r2.version
    assert "below the current bundle" in r3.reasons[0]
    gate = json.loads((tmp_path / "work" / "builds" / r3.version / "gate.json").read_text())
    assert gate["passed"] is False and "shift" in gate["current"]


def test_recall_floor_blocks_publish(tmp_path):
    d1 = night(tmp_path / "a.fa", 1)
    cfg = ReindexConfig(recall_floor=1.01, index=IndexConfig())
    rep = reindex([d1], tmp_path / "w", tmp_path / "b", KmerEncoder(), cfg=cfg, use_ray=False)
    assert not rep.published and "recall@10" in rep.reasons[0] and current_version(tmp_path / "b") is None


def test_cli_reindex_and_rollback(tmp_path, capsys):
    d1 = night(tmp_path / "a.fa", 1)
    assert main(["reindex", str(d1), "--work", str(tmp_path / "w"), "--bundles", str(tmp_path / "b"), "--no-ray"]) == 0
    v1 = current_version(tmp_path / "b")
    d2 = night(tmp_path / "b.fa", 2)
    assert main(["reindex", str(d1), str(d2), "--work", str(tmp_path / "w"), "--bundles", str(tmp_path / "b"),
                 "--no-ray"]) == 0
    assert current_version(tmp_path / "b") != v1
    assert main(["publish", str(tmp_path / "b"), "--version", v1]) == 0  # rollback
    assert current_version(tmp_path / "b") == v1
    capsys.readouterr()


def test_second_night_adds_a_delta_without_retraining(tmp_path):
    cfg = ReindexConfig(index=IndexConfig(index_type="IVF8,Flat", target_recall=0.9), recall_floor=0.9)
    d1 = night(tmp_path / "a.fa", 1, n=400)
    r1 = reindex([d1], tmp_path / "w", tmp_path / "b", KmerEncoder(), cfg=cfg, use_ray=False)
    assert r1.published and r1.gate["index_build"]["mode"] == "full"
    r2 = reindex([d1, night(tmp_path / "b.fa", 2, n=100)], tmp_path / "w",
                 tmp_path / "b", KmerEncoder(), cfg=cfg, use_ray=False)
    build = r2.gate["index_build"]
    assert build["mode"] == "incremental", build
    assert build["delta_rows"] == 80 and r2.gate["ntotal"] == 400 and r2.published
    # the published version carried yesterday's recall calibration set: the exact pass read the 80 new rows only
    assert build["recall_check"] == "updated" and build["exact_rows_read"] == 80, build
    # the new version's index holds old and new rows and finds new rows
    from genoray.predict import Predictor

    pred, _ = Predictor.from_bundle(tmp_path / "b")
    assert pred.index.ntotal == 400 and pred.index.manifest.build.incremental


def test_a_small_night_carries_the_head_over_and_uploads_no_head_object(tmp_path):
    """A +2.5% night (same classes, same head settings) keeps the current head: the new version
    refers to the same head objects, so the night fits and stores no head; a new class, or
    ``head_refit_fraction=0``, refits it."""
    from genoray.bundle import read_version

    cfg = ReindexConfig(index=IndexConfig(index_type="IVF8,Flat", target_recall=0.9), recall_floor=0.9)
    files = [night(tmp_path / "a.fa", 1, n=400)]
    r1 = reindex(files, tmp_path / "w", tmp_path / "b", KmerEncoder(), cfg=cfg, use_ray=False)

    def head_files(version):
        return {k: v for k, v in read_version(tmp_path / "b", version).files.items() if k.startswith("head/")}

    files.append(night(tmp_path / "b.fa", 2, n=10))  # 8 new training rows of 320
    r2 = reindex(files, tmp_path / "w", tmp_path / "b", KmerEncoder(), cfg=cfg, use_ray=False)
    assert r2.published and r2.gate["index_build"]["mode"] == "incremental", r2.gate["index_build"]
    assert r2.gate["head"] == {"mode": "carried", "base": r1.version}
    assert head_files(r2.version) == head_files(r1.version) and head_files(r1.version)
    files.append(toy_fasta(tmp_path / "c.fa", n=0, extra=(("u1 label=other split=train", "ACGT" * 15),)))
    r3 = reindex(files, tmp_path / "w", tmp_path / "b", KmerEncoder(), cfg=cfg, use_ray=False)
    assert r3.gate["head"]["mode"] == "refit" and "other" in r3.gate["head"]["reason"], r3.gate["head"]
    files.append(night(tmp_path / "d.fa", 4, n=10))
    r4 = reindex(files, tmp_path / "w", tmp_path / "b", KmerEncoder(), use_ray=False,
                 cfg=ReindexConfig(index=cfg.index, recall_floor=0.9, head_refit_fraction=0.0))
    assert r4.gate["head"]["mode"] == "refit" and "every night" in r4.gate["head"]["reason"], r4.gate["head"]


def test_a_rollback_during_the_night_is_not_undone(tmp_path, monkeypatch):
    """An operator rolls back while a reindex runs: the night does not publish over it (publish
    compares CURRENT with the version the night started from) and says why."""
    import importlib

    import pytest

    job = importlib.import_module("genoray.pipeline.reindex")  # the module (the package exports the function)
    from genoray.bundle import publish
    from genoray.infra.conditional import ConflictError

    root = tmp_path / "bundles"
    d1, d2 = night(tmp_path / "a.fa", 1), night(tmp_path / "b.fa", 2)
    v1 = reindex([d1], tmp_path / "w", root, KmerEncoder(), use_ray=False).version
    v2 = reindex([d1, d2], tmp_path / "w", root, KmerEncoder(), use_ray=False).version
    real = job.train_head

    def rollback_meanwhile(*args, **kwargs):
        publish(root, v1)  # the operator's rollback, while the third night trains its head
        return real(*args, **kwargs)

    monkeypatch.setattr(job, "train_head", rollback_meanwhile)
    with pytest.raises(ConflictError, match=f"not {v2}"):
        reindex([d1, d2, night(tmp_path / "c.fa", 3)], tmp_path / "w", root, KmerEncoder(), use_ray=False)
    assert current_version(root) == v1
