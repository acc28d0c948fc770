"""HTML reports with plots (genoray/evaluation/html.py, svg.py, curves.py): ``genoray evaluate
STORE --out DIR`` and ``genoray shift REF NEW --out DIR`` write a self-contained report.html
(inline SVG, no script, nothing fetched), the JSON it was drawn from and every chart as an
.svg file; the numbers on the page are the JSON's, and the JSON's are the CLI's."""

import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from conftest import write_fasta

from genoray.cli import main
from genoray.evaluation.curves import pr_curves, reliability
from genoray.evaluation.html import fmt


def three_class_fasta(path, n=240, seed=0, shift=0.0):
    """AT-rich, GC-rich and uniform ("mix") 60-bp records, every 4th in the test split; the
    uniform class overlaps both others, so the curves are not trivial. ``shift`` moves every
    class towards GC (a distribution shift)."""
    rng = np.random.default_rng(seed)
    alphabets = {"at": [0.4, 0.1, 0.1, 0.4], "gc": [0.1, 0.4, 0.4, 0.1], "mix": [0.25] * 4}
    recs = []
    for i in range(n):
        label = ("at", "gc", "mix")[i % 3]
        p = np.asarray(alphabets[label]) + np.array([-shift, shift, shift, -shift])
        seq = "".join(rng.choice(list("ACGT"), size=60, p=p / p.sum()))
        recs.append((f"r{i} label={label} split={'test' if i % 4 == 0 else 'train'}", seq))
    return write_fasta(path, recs)


class _Doc(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attrs, self.ids = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [(tag, k, v) for k, v in attrs]
        self.ids += [v for k, v in attrs if k == "id"]


def self_contained(html: str) -> _Doc:
    doc = _Doc()
    doc.feed(html)
    assert "script" not in doc.tags and "iframe" not in doc.tags and "img" not in doc.tags
    assert not [(t, k) for t, k, _ in doc.attrs if k in ("src", "href") or k.startswith("on")]
    assert re.findall(r"https?://[^\"' ]+", html) == ["http://www.w3.org/2000/svg"] * html.count("<svg ")  # namespace only
    return doc


def test_reliability_and_pr_curves_on_a_hand_example():
    classes = ["a", "b"]
    proba = np.array([[0.95, 0.05], [0.85, 0.15], [0.35, 0.65], [0.45, 0.55]])
    y = ["a", "b", "b", "a"]
    rel = reliability(y, proba, classes, bins=10)
    # bins (0.5,0.6]: row 4 (conf .55, wrong); (0.6,0.7]: row 3 (.65, right); (0.8,0.9]: row 2 (.85, wrong);
    # (0.9,1]: row 1 (.95, right)
    assert [(b["n"], b["confidence"], b["accuracy"]) for b in rel["bins"]] == [
        (1, 0.55, 0.0), (1, 0.65, 1.0), (1, 0.85, 0.0), (1, 0.95, 1.0)]
    assert rel["ece"] == pytest.approx((0.55 + 0.35 + 0.85 + 0.05) / 4)
    pr = pr_curves(y, proba, classes)
    # class b scores .05 .15 .65 .55 with truth 0 1 1 0: ranked .65(1) .55(0) .15(1) .05(0): AP = (1 + 2/3) / 2
    assert pr["b"]["average_precision"] == pytest.approx(5 / 6)
    assert pr["b"]["recall"][-1] == 0.0 and pr["b"]["precision"][-1] == 1.0


@pytest.mark.slow
def test_evaluate_writes_a_self_contained_report_with_the_json_numbers(tmp_path, capsys):
    fa = three_class_fasta(tmp_path / "toy.fa")
    for args in (["embed", fa, "--out", tmp_path / "s", "--no-ray"], ["index", tmp_path / "s", "--out", tmp_path / "i"],
                 ["train", tmp_path / "s", "--index", tmp_path / "i", "--out", tmp_path / "h"]):
        assert main([str(a) for a in args]) == 0
    capsys.readouterr()
    out = tmp_path / "report"
    assert main(["evaluate", str(tmp_path / "s"), "--index", str(tmp_path / "i"), "--head", str(tmp_path / "h"),
                 "--out", str(out), "--json", "--bootstrap", "20"]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "evaluation.json").read_text())
    assert {k: v for k, v in saved.items() if k != "curves"} == printed  # the same report, plus the curves
    charts = {"confusion", "reliability", "pr-curves", "confidence", "ood-scores"}
    assert {p.name for p in out.iterdir()} == {"evaluation.json", "report.html"} | {f"{c}.svg" for c in charts}
    html = (out / "report.html").read_text()
    doc = self_contained(html)
    assert {"summary", "confusion-matrix", "reliability", "precision-recall", "score-distributions"} <= set(doc.ids)
    assert {f"fig-{c}" for c in charts} <= set(doc.ids)
    for c in charts:  # the inline chart is the file's
        assert (out / f"{c}.svg").read_text() in html

    fused = saved["methods"]["fused"]
    assert sum(map(sum, fused["confusion_matrix"])) == saved["n"] == 60
    confusion = (out / "confusion.svg").read_text()
    assert re.findall(r'class="cell">(\d+)<', confusion) == [str(v) for row in fused["confusion_matrix"] for v in row]
    for name, m in saved["methods"].items():
        assert f"<tr><td>{name}</td><td>{fmt(m['accuracy'])}</td><td>{fmt(m['f1'])}</td><td>{fmt(m['mcc'])}</td>" in html
    rel = saved["curves"]["reliability"]
    assert set(rel) == {"calibrated", "uncalibrated"}  # before and after calibration
    for kind, r in rel.items():
        assert f"<tr><td>{kind}</td><td>{fmt(r['ece'])}</td></tr>" in html
        assert sum(b["n"] for b in r["bins"]) == 60
    pr = saved["curves"]["pr_curves"]
    assert set(pr) == {"at", "gc", "mix"}
    for c, v in pr.items():
        assert f"<tr><td>{c}</td><td>{fmt(v['average_precision'])}</td></tr>" in html
    scores = saved["curves"]["scores"]
    right, wrong = sum(scores["confidence_correct"]["counts"]), sum(scores["confidence_wrong"]["counts"])
    assert right == round(fused["accuracy"] * 60) and right + wrong == 60

    # "uncalibrated" is the fused mixture before calibration: calibrating it gives the served probabilities
    from genoray.evaluation import evaluate_store
    from genoray.heads import load_head

    arrays: dict = {}
    evaluate_store(tmp_path / "s", tmp_path / "i", tmp_path / "h", arrays=arrays)
    head = load_head(tmp_path / "h")
    assert np.allclose(head._calibrate(arrays["uncalibrated"]), arrays["proba"])
    assert not np.allclose(arrays["uncalibrated"], arrays["proba"])
    print(f"\nreport: {out / 'report.html'}")


@pytest.mark.slow
def test_shift_writes_a_report_with_the_map_and_the_tests(tmp_path, capsys):
    ref = three_class_fasta(tmp_path / "ref.fa", seed=0)
    new = three_class_fasta(tmp_path / "new.fa", seed=1, shift=0.08)
    for fa, store in ((ref, "ref"), (new, "new")):
        args = ["embed", str(fa), "--out", str(tmp_path / store), "--no-ray"]
        if store == "new":
            args += ["--encoder-from", str(tmp_path / "ref")]
        assert main(args) == 0
    capsys.readouterr()
    out = tmp_path / "shift"
    code = main(["shift", str(tmp_path / "ref"), str(tmp_path / "new"), "--reference-split", "all",
                 "--new-split", "all", "--max-samples", "100", "--n-permutations", "100", "--group-by", "label",
                 "--out", str(out)])
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "shift.json").read_text())
    assert code == (5 if saved["is_shift"] else 0) and saved["is_shift"]  # GC-shifted: flagged
    assert printed["html"] == str(out / "report.html")
    assert {k: v for k, v in saved.items() if k != "map"} == {k: v for k, v in printed.items() if k != "html"}
    assert {p.name for p in out.iterdir()} == {"shift.json", "report.html", "embedding-map.svg", "ood-by-group.svg"}
    html = (out / "report.html").read_text()
    doc = self_contained(html)
    assert {"verdict", "embedding-map", "ood-by-group", "fig-embedding-map"} <= set(doc.ids)
    assert "shift detected" in html
    for stat, p in (("mmd2", "mmd_p_value"), ("c2st_auc", "c2st_p_value"), ("ood_fraction", "ood_p_value")):
        assert f"<td>{fmt(saved[stat])}</td><td>{fmt(saved[p])}</td>" in html
    m = saved["map"]
    assert len(m["reference"][0]) == len(m["reference"][1]) == 100 and len(m["new"][0]) == 100
    chart = (out / "embedding-map.svg").read_text()
    assert chart.count("<circle") == 200 and "reference (100)" in chart and "new (100)" in chart
    for g, v in saved["by_group"].items():
        assert f"<tr><td>{g}</td><td>{v['n']}</td><td>{fmt(v['ood_fraction'])}</td></tr>" in html
