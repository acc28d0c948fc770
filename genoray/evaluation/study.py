"""``evaluate``: a study of methods x datasets x protocols, written as Markdown + JSON.

A study is one YAML file (see ``examples/study.yaml``)::

    name: shared-benchmarks
    seed: 0
    bootstrap: 200                  # resamples for 95% confidence intervals
    encoders: [kmer, kmer-pos]      # any genoray encoder name (hf:<dir> for a frozen model)
    datasets: {ecoli: ../shared/data/ecoli_promoter_ipromoter2l.parquet, ...}
    within: [ecoli, ...]            # train split -> test split of the same dataset
    cross: [[ecoli, tata], ...]     # train split of A -> test split of B (same label set)
    pooled: [[ecoli, tata]]         # union of train splits -> each test split
    cost: {watts_per_core: 10, grid_gco2_per_kwh: 400}
    trust_remote_code: false        # let hf:<local dir> models (HyenaDNA) run their own code
    max_train: 0                    # seeded subsample: at most this many train / test rows
    max_test: 0                     #   per dataset (0 = all)
    heads: [linear]                 # fused head modes: [linear, trees, auto] adds fused[trees], fused[auto]

Methods per encoder: majority floor, kNN vote, linear head (logistic regression on the
encoder's features; with ``kmer`` this is the k-mer + LR baseline), fused head (and, with
``heads: [linear, trees, auto]``, the fused head with a tree part, ``fused[trees]``, and the
one ``auto`` chooses, ``fused[auto]``; the report names each fused head's mixture); for an
``hf:<model>`` encoder and a ``lora: {r: 8, epochs: 1, max_steps: 200}`` entry, also a LoRA
fine-tune of the same model (:mod:`genoray.evaluation.finetune`), timed like the rest; in the cross
protocol also ``fused+domain-norm`` (per-domain standardisation, :mod:`genoray.scoring.adapt`) and
``fused+pseudo-label`` (confidence curriculum with replay), both *inductive*: fitted on the
target dataset's unlabeled train split and scored on its test split (disjoint rows). Metrics: accuracy, macro F1, MCC,
AUROC with bootstrap 95% intervals. Cost: wall and CPU seconds per cell; energy is an
*estimate* = CPU seconds x ``watts_per_core`` (no power meter is read), CO2 = energy x
``grid_gco2_per_kwh``. Per method, ``train_seconds`` and ``inference_seconds`` (frozen methods:
embedding the test split + the head's prediction; LoRA: its own forward passes). The report
records seeds, package versions and data sha256.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from genoray import __version__
from genoray.config import Study
from genoray.encoders import encoder_from_name
from genoray.evaluation.finetune import LoraClassifier
from genoray.evaluation.html import write_study
from genoray.evaluation.metrics import bootstrap_ci, classification_metrics, majority_proba
from genoray.heads import FusedHead, KNNVoteHead, LinearHead, align_proba
from genoray.infra.artifacts import sha256_file, strict_json, write_json
from genoray.scoring.adapt import DomainNormalizer, PseudoLabeler
from genoray.sequences import read_sequences

log = logging.getLogger(__name__)
REPORT_JSON = "report.json"
REPORT_MD = "report.md"


def _load(path: str):
    t, _ = read_sequences(path)
    return (np.array(t["sequence"].to_pylist(), dtype=object), np.array(t["label"].to_pylist(), dtype=object),
            np.array(t["split"].to_pylist(), dtype=object))


def _subsample(data, study: Study):
    """At most ``max_train`` train and ``max_test`` test rows (seeded; 0 = all)."""
    seqs, labels, splits = data
    rng = np.random.default_rng(study.seed)
    keep = np.ones(len(seqs), dtype=bool)
    for split, cap in (("train", study.max_train), ("test", study.max_test)):
        rows = np.flatnonzero(splits == split)
        if cap and len(rows) > cap:
            keep[rng.choice(rows, len(rows) - cap, replace=False)] = False
    return seqs[keep], labels[keep], splits[keep]


def _methods(xtr, ytr, xte, cross: bool, seed: int, xad=None, heads=("linear",)):
    """``xad``: the unlabeled target sample the cross-protocol adaptations are fitted on
    (disjoint from ``xte``, the rows they score). ``heads``: the fused head modes (one
    shared fit; ``linear`` is ``fused``, others ``fused[mode]``)."""

    yield "knn_vote", KNNVoteHead(k=10).fit(xtr, ytr), xte
    yield "linear", LinearHead(C=0.1).fit(xtr, ytr), xte
    for mode, head in FusedHead.fit_modes(heads, xtr, ytr, seed=seed).items():
        yield ("fused" if mode == "linear" else f"fused[{mode}]"), head, xte
    if cross and xad is not None and len(xad):
        norm = DomainNormalizer().fit(np.vstack([xtr, xad]), np.r_[["src"] * len(xtr), ["tgt"] * len(xad)])
        yield "fused+domain-norm", FusedHead(seed=seed).fit(norm.transform(xtr, "src"), ytr), norm.transform(xte, "tgt")
        yield "fused+pseudo-label", PseudoLabeler(lambda: FusedHead(seed=seed), seed=seed).fit(xtr, ytr, xad), xte


def _cell(study: Study, encoder_name: str, train: list[str], test: str, protocol: str, data) -> list[dict[str, Any]]:
    t0, c0 = time.perf_counter(), time.process_time()
    seqs_tr = np.concatenate([data[d][0][data[d][2] == "train"] for d in train])
    y_tr = np.concatenate([data[d][1][data[d][2] == "train"] for d in train])
    s_te, y_te = data[test][0][data[test][2] == "test"], data[test][1][data[test][2] == "test"]
    if not set(y_te) <= set(y_tr):
        raise ValueError(f"{protocol} {train}->{test}: test labels {sorted(set(y_te))} not in training labels {sorted(set(y_tr))}")
    enc = encoder_from_name(encoder_name, study.trust_remote_code)
    if getattr(enc, "needs_fit", False):
        enc.fit(list(seqs_tr))  # type: ignore[attr-defined]  # encoders that need fitting have fit()
    xtr = enc.embed(list(seqs_tr))
    t_te = time.perf_counter()
    xte = enc.embed(list(s_te))
    embed_test_s = time.perf_counter() - t_te
    xad = None
    if protocol == "cross":  # unlabeled adaptation sample: the target's train rows, never the scored test rows
        s_ad = data[test][0][data[test][2] == "train"]
        xad = enc.embed(list(s_ad)) if len(s_ad) else None
    embed_s = time.perf_counter() - t0
    classes = np.array(sorted(set(y_tr)), dtype=object)
    rows: list[dict[str, Any]] = [{"method": "majority", "proba": majority_proba(y_tr, classes, len(y_te)),
                                   "seconds": 0.0, "cpu": 0.0, "train_s": 0.0, "infer_s": 0.0}]
    t1, c1 = time.perf_counter(), time.process_time()
    for name, head, x in _methods(xtr, y_tr, xte, protocol == "cross", study.seed, xad, study.heads):  # fits, yields
        t2 = time.perf_counter()
        p = align_proba(head.classes_, head.predict_proba(x), classes)
        t3 = time.perf_counter()
        # fused heads fitted together report what a fit of their mode alone runs (fit_seconds_)
        train_s = getattr(head, "fit_seconds_", t2 - t1) if len(study.heads) > 1 else t2 - t1
        # inference of a frozen method = embedding the test split + the head's prediction
        rows.append({"method": name, "proba": p, "seconds": train_s + t3 - t2, "cpu": time.process_time() - c1,
                     "train_s": train_s, "infer_s": embed_test_s + t3 - t2,
                     "chosen": getattr(head, "selection_", {}).get("chosen")})
        t1, c1 = time.perf_counter(), time.process_time()
    if encoder_name.startswith("hf:") and "+" not in encoder_name and study.lora:
        t1, c1 = time.perf_counter(), time.process_time()
        clf = LoraClassifier(encoder_name[3:], seed=study.seed, trust_remote_code=study.trust_remote_code,
                             **study.lora).fit(list(seqs_tr), y_tr)
        t2 = time.perf_counter()
        p = align_proba(clf.classes_, clf.predict_proba(list(s_te)), classes)
        rows.append({"method": f"lora(r={clf.r}, steps={clf.steps_})", "proba": p,
                     "seconds": time.perf_counter() - t1, "cpu": time.process_time() - c1,
                     "train_s": t2 - t1, "infer_s": time.perf_counter() - t2})
    out = []
    total_cpu = time.process_time() - c0
    for r in rows:
        m = classification_metrics(y_te, r["proba"], classes)
        ci = bootstrap_ci(y_te, r["proba"], classes, study.bootstrap, study.seed)
        out.append({"protocol": protocol, "train": "+".join(train), "test": test, "encoder": encoder_name,
                    "method": r["method"], "n_train": int(len(y_tr)), "n_test": int(len(y_te)), **m,
                    "ci95": ci, "embed_seconds": round(embed_s, 2), "method_seconds": round(r["seconds"], 2),
                    "method_cpu_seconds": round(r["cpu"], 2), "total_cpu_seconds": round(total_cpu, 2),
                    "train_seconds": round(r["train_s"], 4), "inference_seconds": round(r["infer_s"], 4),
                    **({"head_chosen": r["chosen"]} if r.get("chosen") else {})})
    return out


def evaluate(study: Study, out_dir: str | Path) -> dict[str, Any]:
    """Run every cell of the study; write ``report.json``, ``report.md`` and ``report.html``
    (:func:`genoray.evaluation.html.write_study`) into ``out_dir``."""
    import sklearn

    t0, c0 = time.perf_counter(), time.process_time()
    data = {name: _subsample(_load(path), study) for name, path in study.datasets.items()}
    cells = []
    for enc in study.encoders:
        for d in study.within:
            cells += _cell(study, enc, [d], d, "within", data)
        for a, b in study.cross:
            cells += _cell(study, enc, [a], b, "cross", data)
        for group in study.pooled:
            for d in group:
                cells += _cell(study, enc, list(group), d, "pooled", data)
    cpu = time.process_time() - c0
    wh = cpu * study.cost["watts_per_core"] / 3600
    report: dict[str, Any] = {
        "study": asdict(study), "results": cells,
        "cost": {"wall_seconds": round(time.perf_counter() - t0, 1), "cpu_seconds": round(cpu, 1),
                 "energy_wh_estimate": round(wh, 3), "co2_g_estimate": round(wh / 1000 * study.cost["grid_gco2_per_kwh"], 3),
                 "basis": f"CPU seconds x {study.cost['watts_per_core']} W per core (assumed, no power meter); "
                          f"{study.cost['grid_gco2_per_kwh']} gCO2/kWh (assumed grid intensity)"},
        "provenance": {"genoray": __version__, "numpy": np.__version__, "scikit-learn": sklearn.__version__,
                       "python": platform.python_version(), "seed": study.seed,
                       "data_sha256": {k: sha256_file(v) for k, v in study.datasets.items()}},
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / REPORT_JSON, strict_json(report)[0])  # undefined metrics (NaN) -> null
    (out / REPORT_MD).write_text(to_markdown(report))
    write_study(report, out)  # report.html: the results as charts
    log.info("evaluate %s: %d result rows in %s; %.1f s wall, %.1f CPU s", study.name, len(cells), out,
             report["cost"]["wall_seconds"], report["cost"]["cpu_seconds"])
    return report


def _f(v) -> str:
    return "n/a" if v is None or np.isnan(v) else f"{v:.3f}"


def to_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table with the cost line."""
    lines = [f"# genoray evaluation: {report['study']['name']}", "",
             "| protocol | train → test | encoder | method | acc [95% CI] | MCC | AUROC [95% CI] | F1 | train s | infer s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        ci = r["ci95"]
        several = len(report["study"].get("heads") or ()) > 1  # name each fused head's mixture
        method = f"{r['method']} ({r['head_chosen']})" if several and r.get("head_chosen") else r["method"]
        lines.append(f"| {r['protocol']} | {r['train']} → {r['test']} | {r['encoder']} | {method} | "
                     f"{_f(r['accuracy'])} [{_f(ci['accuracy'][0])}, {_f(ci['accuracy'][1])}] | {_f(r['mcc'])} | "
                     f"{_f(r['auroc'])} [{_f(ci['auroc'][0])}, {_f(ci['auroc'][1])}] | {_f(r['f1'])} | "
                     f"{r.get('train_seconds', '')} | {r.get('inference_seconds', '')} |")
    c = report["cost"]
    lines += ["", f"Cost: {c['wall_seconds']} s wall, {c['cpu_seconds']} CPU s, about {c['energy_wh_estimate']} Wh and "
                  f"{c['co2_g_estimate']} g CO2 ({c['basis']}).",
              "", f"Provenance: `{json.dumps(report['provenance'])}`"]
    return "\n".join(lines) + "\n"
