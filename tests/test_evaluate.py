"""The evaluation harness and domain adaptation on small real and synthetic data."""

import json

import numpy as np
import pytest

from genoray.heads import LinearHead
from genoray.scoring.adapt import PseudoLabeler, domain_normalize


def test_domain_normalize_uses_each_domains_own_statistics():
    x = np.array([[1.0, 10], [3.0, 30], [101.0, 5], [103.0, 7]])
    out = domain_normalize(x, np.array(["a", "a", "b", "b"]))
    assert np.allclose(out, [[-1, -1], [1, 1], [-1, -1], [1, 1]])


def test_pseudo_labelling_helps_on_a_shifted_target_and_keeps_the_source():
    rng = np.random.default_rng(0)

    def domain(n, offset):
        y = rng.integers(0, 2, n)
        x = rng.normal(size=(n, 2)) + np.c_[2.5 * y, np.zeros(n)] + offset
        return x.astype(np.float32), np.where(y == 1, "pos", "neg").astype(object)

    xs, ys = domain(400, 0.0)
    xt, yt = domain(400, np.array([1.2, 1.2]))
    base = LinearHead().fit(xs, ys)
    pl = PseudoLabeler(lambda: LinearHead(), seed=0).fit(xs, ys, xt)
    assert len(pl.history_) >= 2 and pl.history_[0]["target_rows"] == 0
    assert (pl.predict(xt) == yt).mean() >= (base.predict(xt) == yt).mean() - 0.01
    assert (pl.predict(xs) == ys).mean() > 0.85  # replay: the source is not forgotten


@pytest.mark.slow
def test_study_within_cross_pooled(tmp_path):
    from conftest import data_file

    from genoray.cli import main
    from genoray.pipeline.quickstart import bundled_dataset

    study = tmp_path / "study.yaml"
    study.write_text(f"""
name: tiny
bootstrap: 20
encoders: [kmer]
datasets: {{ecoli: {bundled_dataset()}, tata: {data_file('human_tata_promoter_gue')}}}
within: [ecoli]
cross: [[ecoli, tata]]
pooled: [[ecoli, tata]]
""")
    assert main(["evaluate", str(study), "--out", str(tmp_path / "rep")]) == 0
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    cells = {(r["protocol"], r["test"], r["method"]): r for r in rep["results"]}
    assert cells[("within", "ecoli", "fused")]["accuracy"] > 0.75
    assert ("cross", "tata", "fused+domain-norm") in cells and ("cross", "tata", "fused+pseudo-label") in cells
    assert ("pooled", "tata", "fused") in cells and ("pooled", "ecoli", "fused") in cells
    lo, hi = cells[("within", "ecoli", "fused")]["ci95"]["accuracy"]
    assert lo <= cells[("within", "ecoli", "fused")]["accuracy"] <= hi
    assert rep["cost"]["energy_wh_estimate"] > 0 and "assumed" in rep["cost"]["basis"]
    assert len(rep["provenance"]["data_sha256"]) == 2
    assert "| within | ecoli → ecoli | kmer | fused |" in (tmp_path / "rep" / "report.md").read_text()
    html = (tmp_path / "rep" / "report.html").read_text()  # the same cells as charts, numbers from report.json
    fused = cells[("within", "ecoli", "fused")]
    assert "<script" not in html and f"<td>within ecoli→ecoli kmer fused</td><td>{fused['accuracy']:.4f}</td>" in html
    assert (tmp_path / "rep" / "study-accuracy.svg").read_text() in html


def test_study_refuses_unknown_datasets(tmp_path):
    from genoray.config import load_study

    p = tmp_path / "s.yaml"
    p.write_text("name: x\ndatasets: {a: a.parquet}\nwithin: [b]\n")
    with pytest.raises(ValueError, match="not defined"):
        load_study(p)


def _run_toy_study(tmp_path, seed: int, study_yaml: str) -> dict:
    """Run ``study_yaml`` (``{model}``: a tiny random char-BERT) on a 120-row AT-rich vs GC-rich
    Parquet set (every 5th row test) in ``tmp_path``; returns the report."""
    pytest.importorskip("peft")
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tiny_models import make_char_bert

    model = make_char_bert(tmp_path / "bert")
    rng = np.random.default_rng(seed)
    seqs = ["".join(rng.choice(list("AAT" if i % 2 else "GGC"), 40)) for i in range(120)]
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(120)], "sequence": seqs,
                             "label": ["at" if i % 2 else "gc" for i in range(120)],
                             "split": ["test" if i % 5 == 0 else "train" for i in range(120)]}), tmp_path / "toy.parquet")
    (tmp_path / "s.yaml").write_text(study_yaml.replace("{model}", str(model)))
    from genoray.config import load_study
    from genoray.evaluation.study import evaluate

    return evaluate(load_study(tmp_path / "s.yaml"), tmp_path / "out")


@pytest.mark.slow
def test_study_with_frozen_hf_model_and_lora(tmp_path):
    rep = _run_toy_study(tmp_path, 0, """
name: hf
bootstrap: 10
encoders: ["hf:{model}"]
datasets: {toy: toy.parquet}
within: [toy]
lora: {r: 4, lr: 0.005, epochs: 5, batch_size: 16}
""")
    methods = {r["method"]: r for r in rep["results"]}
    assert {"majority", "knn_vote", "linear", "fused"} <= set(methods)
    lora = next(r for m, r in methods.items() if m.startswith("lora("))
    assert lora["accuracy"] > 0.8 and lora["method_seconds"] > 0
    assert methods["fused"]["accuracy"] > 0.8  # frozen random-init features still separate AT from GC


def test_study_subsamples_and_runs_a_fused_encoder_without_lora(tmp_path):
    rep = _run_toy_study(tmp_path, 1, """
name: fused
bootstrap: 10
max_train: 30
max_test: 10
encoders: ["hf:{model}+kmer"]
datasets: {toy: toy.parquet}
within: [toy]
lora: {r: 4, max_steps: 2}
""")
    methods = {r["method"]: r for r in rep["results"]}
    assert set(methods) == {"majority", "knn_vote", "linear", "fused"}  # LoRA is for plain hf: models only
    fused = methods["fused"]
    assert (fused["n_train"], fused["n_test"]) == (30, 10)
    assert fused["inference_seconds"] >= 0 and fused["train_seconds"] >= 0 and fused["accuracy"] > 0.8
    assert "infer s" in (tmp_path / "out" / "report.md").read_text()


def test_study_runs_tree_heads_beside_the_linear_one(tmp_path):
    from genoray.cli import main
    from genoray.pipeline.quickstart import bundled_dataset

    study = tmp_path / "study.yaml"
    study.write_text(f"""
name: heads
bootstrap: 10
max_train: 800
max_test: 300
encoders: [kmer]
heads: [linear, trees, auto]
datasets: {{ecoli: {bundled_dataset()}}}
within: [ecoli]
""")
    assert main(["evaluate", str(study), "--out", str(tmp_path / "rep")]) == 0
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    m = {r["method"]: r for r in rep["results"]}
    assert {"fused", "fused[trees]", "fused[auto]"} <= set(m)
    # each mode mixes only the parts it allows (trees: kNN + trees; the default: kNN + linear)
    assert "linear" not in m["fused[trees]"]["head_chosen"] and "trees" not in m["fused"]["head_chosen"]
    assert all(m[k]["train_seconds"] > 0 for k in ("fused", "fused[trees]", "fused[auto]"))
    if "trees" not in m["fused[auto]"]["head_chosen"]:  # auto kept the default head: the same predictions
        assert m["fused[auto]"]["head_chosen"] == m["fused"]["head_chosen"]
        assert m["fused[auto]"]["mcc"] == m["fused"]["mcc"] and m["fused[auto]"]["auroc"] == m["fused"]["auroc"]
    assert f"| fused[trees] ({m['fused[trees]']['head_chosen']}) |" in (tmp_path / "rep" / "report.md").read_text()
    study.write_text(study.read_text().replace("heads: [linear, trees, auto]", "heads: [linear, forest]"))
    assert main(["evaluate", str(study), "--out", str(tmp_path / "rep2")]) == 2
