"""Shift detection: no alarm on a random split, alarm on a real shift, calibrated OOD threshold."""

import numpy as np
import pytest

from genoray.evaluation.shift import ShiftConfig, ShiftDetector, mmd_permutation_test


def lowrank(n, d=24, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(99).normal(size=(6, d))
    z = rng.normal(size=(n, 6))
    z[:, 0] += shift
    return (z @ basis + 0.3 * rng.normal(size=(n, d))).astype(np.float32)


CFG = ShiftConfig(max_samples=300, n_permutations=200, pca_dim=8)


def test_same_distribution_is_not_flagged():
    rep = ShiftDetector(CFG).fit(lowrank(2000, seed=1)).score(lowrank(800, seed=2))
    assert not rep.is_shift and rep.mmd_p_value > 0.01 and rep.c2st_p_value > 0.01
    assert abs(rep.ood_fraction - 0.05) < 0.05


def test_real_shift_is_flagged_with_groups():
    new = lowrank(800, shift=1.5, seed=3)
    groups = np.array(["a", "b"] * 400)
    rep = ShiftDetector(CFG).fit(lowrank(2000, seed=1)).score(new, groups)
    assert rep.is_shift and rep.mmd_p_value < 0.01 and rep.c2st_auc > 0.7 and rep.c2st_p_value < 0.01
    assert set(rep.by_group) == {"a", "b"} and sum(g["n"] for g in rep.by_group.values()) == 300


def test_mmd_is_zero_for_identical_samples_and_p_in_range():
    x = np.random.default_rng(0).normal(size=(50, 3))
    stat, p = mmd_permutation_test(x, x.copy(), 50, np.random.default_rng(0))
    assert stat == pytest.approx(0.0, abs=1e-12) and p == 1.0


def test_too_little_data_is_refused():
    with pytest.raises(ValueError, match="at least 10"):
        ShiftDetector(CFG).fit(lowrank(5))


@pytest.mark.slow
def test_cli_shift_between_two_real_stores(tmp_path, capsys):
    import json

    from conftest import data_file

    from genoray.cli import main
    from genoray.pipeline.quickstart import bundled_dataset

    for name, path in (("ecoli_promoter_ipromoter2l", bundled_dataset()),
                       ("human_tata_promoter_gue", data_file("human_tata_promoter_gue"))):
        assert main(["embed", str(path), "--out", str(tmp_path / name), "--no-ray"]) == 0
    capsys.readouterr()
    code = main(["shift", str(tmp_path / "ecoli_promoter_ipromoter2l"), str(tmp_path / "human_tata_promoter_gue"),
                 "--max-samples", "300", "--group-by", "label"])
    rep = json.loads(capsys.readouterr().out)
    assert code == 5 and rep["is_shift"] and rep["mmd_p_value"] < 0.01 and set(rep["by_group"]) == {"promoter", "non_promoter"}
    code = main(["shift", str(tmp_path / "ecoli_promoter_ipromoter2l"), str(tmp_path / "ecoli_promoter_ipromoter2l"),
                 "--reference-split", "train", "--new-split", "train", "--max-samples", "300"])
    rep = json.loads(capsys.readouterr().out)
    assert code == 0 and not rep["is_shift"]


def test_random_halves_combined_false_positive_rate():
    """Item 2 (null check): random halves of one distribution, 20 seeds: the Bonferroni-combined
    decision (any of the three p-values < alpha / 3) is the verdict, and it fires on at most 2 of
    20 seeds (its level is <= 5%; P(>= 3 of 20 | 5%) = 0.075 would already be suspect)."""
    data = lowrank(3000, seed=7)
    fired = 0
    for seed in range(20):
        perm = np.random.default_rng(500 + seed).permutation(len(data))
        a, b = data[perm[:1500]], data[perm[1500:]]
        rep = ShiftDetector(ShiftConfig(max_samples=300, n_permutations=200, pca_dim=8, seed=seed)).fit(a).score(b)
        assert rep.is_shift == (min(rep.mmd_p_value, rep.c2st_p_value, rep.ood_p_value) < 0.05 / 3)
        fired += rep.is_shift
    assert fired <= 2
