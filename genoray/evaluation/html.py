"""Self-contained HTML reports with plots: ``genoray evaluate STORE ... --out DIR`` and
``genoray shift REF NEW --out DIR`` write ``report.html`` (every chart inline SVG, no script,
no external resource: it opens from a mail attachment), the JSON it was drawn from
(``evaluation.json`` / ``shift.json``) and each chart as an ``.svg`` file beside it (for
papers). A study (``genoray evaluate STUDY.yaml --out DIR``) gets a ``report.html`` with its
results as charts too. Charts come from :mod:`genoray.evaluation.svg`; every number the page
shows is one of the JSON's, printed with :func:`fmt`.
"""

from __future__ import annotations

import datetime as dt
from html import escape
from pathlib import Path
from typing import Any

from genoray import __version__
from genoray.evaluation import svg
from genoray.infra.artifacts import strict_json, write_json
from genoray.infra.fs import atomic_write_bytes

REPORT_HTML = "report.html"
EVALUATION_JSON = "evaluation.json"
SHIFT_JSON = "shift.json"

STYLE = """body{font:14px/1.45 system-ui,sans-serif;color:#1d2330;max-width:1100px;margin:24px auto;padding:0 16px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #d9dde5}
table{border-collapse:collapse;margin:8px 0}th,td{padding:3px 10px;border-bottom:1px solid #eef0f4;text-align:right}
th:first-child,td:first-child{text-align:left}.figs{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:0}figcaption{font-size:12px;color:#5b6474;max-width:440px}.verdict{font-weight:700}
.shift{color:#b3261e}.ok{color:#1e7f4f}.meta{color:#5b6474;font-size:12px}"""


def fmt(v: Any) -> str:
    """A number as the report prints it (4 decimals; integers as they are; ``n/a`` for undefined)."""
    if v is None or (isinstance(v, float) and v != v):
        return "n/a"
    if isinstance(v, bool) or isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4f}"
    return escape(str(v))


def table(header: list[str], rows: list[list[Any]], cls: str = "") -> str:
    """An HTML table; cells go through :func:`fmt` (strings escaped)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


class Page:
    """An HTML report being assembled: sections of text, tables and figures; each figure is
    also written as ``<name>.svg`` in the report's directory."""

    def __init__(self, out_dir: str | Path, title: str):
        self.out, self.title = Path(out_dir), title
        self.parts: list[str] = []
        self.figures: list[tuple[str, str]] = []

    def section(self, heading: str, *html: str) -> None:
        """A ``<h2>`` section with the given HTML fragments."""
        self.parts.append(f'<section id="{escape(heading.lower().replace(" ", "-"))}"><h2>{escape(heading)}</h2>'
                          + "".join(html) + "</section>")

    def figure(self, name: str, chart: str, caption: str) -> str:
        """A chart (SVG text) as an inline figure; written to ``<name>.svg`` on :meth:`write`."""
        self.figures.append((f"{name}.svg", chart))
        return f'<figure id="fig-{escape(name)}">{chart}<figcaption>{escape(caption)} ({escape(name)}.svg)</figcaption></figure>'

    def write(self) -> Path:
        """Write the figures and ``report.html``; returns the HTML's path."""
        self.out.mkdir(parents=True, exist_ok=True)
        for name, chart in self.figures:
            atomic_write_bytes(self.out / name, chart.encode())
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        html = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(self.title)}</title>'
                f'<style>{STYLE}</style></head><body><h1>{escape(self.title)}</h1>'
                f'<p class="meta">genoray {escape(__version__)}, {stamp}</p>' + "".join(self.parts) + "</body></html>\n")
        atomic_write_bytes(self.out / REPORT_HTML, html.encode())
        return self.out / REPORT_HTML


def write_evaluation(rep: dict[str, Any], out_dir: str | Path) -> Path:
    """``evaluation.json`` (the report of :func:`genoray.evaluation.report.evaluation_report`,
    with ``curves``), ``report.html`` and the charts; returns the HTML's path."""
    if "curves" not in rep:
        raise ValueError("the HTML report plots the report's curves: call evaluation_report(..., curves=True)")
    rep = strict_json(rep)[0]
    out = Path(out_dir)
    write_json(out / EVALUATION_JSON, rep)
    classes, curves, fused = rep["classes"], rep["curves"], rep["methods"]["fused"]
    page = Page(out, f"genoray evaluation: {rep['store']}")
    page.section("Summary", table(["store", "split", "n", "classes", "train split"],
                                  [[rep["store"], rep["split"], rep["n"], ", ".join(classes), rep["train_split"]]]),
                 table(["method", "accuracy", "macro F1", "MCC", "AUROC"],
                       [[name, m["accuracy"], m["f1"], m["mcc"], m["auroc"]] for name, m in rep["methods"].items()],
                       "methods"))
    per_class = [[c, pc["precision"], pc["recall"], pc["f1"], pc["support"]] for c, pc in fused["per_class"].items()]
    page.section("Confusion matrix",
                 page.figure("confusion", svg.heatmap(fused["confusion_matrix"], classes, classes,
                                                      "fused head: confusion matrix"),
                             "rows: true class, columns: predicted class"),
                 table(["class", "precision", "recall", "F1", "support"], per_class, "per-class"))
    rel = curves["reliability"]
    series = [(f"{k} (ECE {fmt(v['ece'])})", [b["confidence"] for b in v["bins"]], [b["accuracy"] for b in v["bins"]])
              for k, v in sorted(rel.items(), reverse=True)]
    head = rep["head"]
    how = f"temperature T = {fmt(head['calibration_T'])}" if head["calibration_T"] is not None else "isotonic"
    page.section("Reliability",
                 page.figure("reliability", svg.lines(series, "reliability (top class)", "mean confidence",
                                                      "accuracy", diagonal=True, markers=True),
                             f"before (uncalibrated) and after calibration ({how}); the diagonal is perfect calibration"),
                 table(["probabilities", "ECE"], [[k, v["ece"]] for k, v in sorted(rel.items(), reverse=True)], "ece"))
    pr = curves["pr_curves"]
    page.section("Precision-recall",
                 page.figure("pr-curves", svg.lines([(f"{c} (AP {fmt(v['average_precision'])})", v["recall"],
                                                      v["precision"]) for c, v in pr.items()],
                                                    "precision-recall per class", "recall", "precision"),
                             "one-vs-rest, the class probability as the score"),
                 table(["class", "average precision"], [[c, v["average_precision"]] for c, v in pr.items()], "ap"))
    sc = curves["scores"]
    page.section("Score distributions",
                 '<div class="figs">',
                 page.figure("confidence", svg.histograms(
                     [("correct", sc["confidence_correct"]["counts"]), ("wrong", sc["confidence_wrong"]["counts"])],
                     sc["confidence_correct"]["edges"], "top probability", "probability of the predicted class"),
                     "right and wrong predictions, each normalised to its own total"),
                 page.figure("ood-scores", svg.histograms([("test rows", sc["ood_score"]["counts"])],
                                                          sc["ood_score"]["edges"], "OOD score", "OOD score"),
                             f"mean OOD score {fmt(fused.get('mean_ood_score'))}"),
                 "</div>")
    return page.write()


def write_shift(report: dict[str, Any], embedding_map: dict[str, Any], out_dir: str | Path) -> Path:
    """``shift.json`` (the :class:`~genoray.evaluation.shift.ShiftReport` and the map's points),
    ``report.html`` and the charts; returns the HTML's path."""
    doc = strict_json({**report, "map": embedding_map})[0]
    out = Path(out_dir)
    write_json(out / SHIFT_JSON, doc)
    verdict = ('<p class="verdict shift">shift detected</p>' if doc["is_shift"]
               else '<p class="verdict ok">no shift detected</p>')
    alpha = doc["config"].get("alpha")
    page = Page(out, "genoray shift: reference vs new")
    page.section("Verdict", verdict, table(
        ["test", "statistic", "p-value"],
        [["MMD (permutation)", doc["mmd2"], doc["mmd_p_value"]],
         ["classifier two-sample (AUC)", doc["c2st_auc"], doc["c2st_p_value"]],
         ["OOD fraction (expected " + fmt(doc["ood_expected"]) + ")", doc["ood_fraction"], doc["ood_p_value"]]],
        "tests"),
        f"<p>alpha {fmt(alpha)}, Bonferroni-corrected over the three tests; reference rows {doc['n_reference']}, "
        f"new rows {doc['n_new']}; OOD threshold {fmt(doc['ood_threshold'])}.</p>")
    m = doc["map"]
    page.section("Embedding map", page.figure("embedding-map", svg.scatter(
        [("reference", m["reference"][0], m["reference"][1]), ("new", m["new"][0], m["new"][1])],
        "reference vs new (PCA of the reference)", "PC1", "PC2"),
        "the shift test's samples projected on the first two principal components fitted on reference rows"))
    if doc["by_group"]:
        groups = sorted(doc["by_group"].items())
        page.section("OOD by group", page.figure("ood-by-group", svg.bars(
            [(g, v["ood_fraction"], None, None) for g, v in groups], "OOD fraction per group", "OOD fraction"),
            f"expected {fmt(doc['ood_expected'])}"),
            table(["group", "n", "OOD fraction"], [[g, v["n"], v["ood_fraction"]] for g, v in groups], "groups"))
    return page.write()


def write_study(report: dict[str, Any], out_dir: str | Path) -> Path:
    """``report.html`` of a study (its ``report.json`` is :mod:`genoray.evaluation.study`'s):
    accuracy and AUROC of every cell as bars with their bootstrap 95% intervals."""
    report = strict_json(report)[0]
    page = Page(out_dir, f"genoray study: {report['study']['name']}")
    cells = report["results"]
    name = lambda r: f"{r['protocol']} {r['train']}→{r['test']} {r['encoder']} {r['method']}"
    for metric, label in (("accuracy", "accuracy"), ("auroc", "AUROC")):
        page.section(label, page.figure(f"study-{metric}", svg.bars(
            [(name(r), r[metric], *(r["ci95"][metric] or [None, None])) for r in cells], f"{label} per cell",
            f"{label} (whisker: bootstrap 95% CI)"), "protocol, train → test datasets, encoder, method"))
    page.section("Results", table(["cell", "accuracy", "MCC", "AUROC", "F1"],
                                  [[name(r), r["accuracy"], r["mcc"], r["auroc"], r["f1"]] for r in cells], "results"))
    c = report["cost"]
    page.section("Cost", f"<p>{fmt(c['wall_seconds'])} s wall, {fmt(c['cpu_seconds'])} CPU s ({escape(c['basis'])})</p>")
    return page.write()
