"""``run_quickstart``: the whole method end to end on one labeled file.

Embeds (local Ray, the built-in k-mer encoder by default), builds the index on the ``train``
split, fits the fused head, and evaluates kNN vote, linear head, fused head and the majority
floor on the ``test`` split. With no arguments it uses the bundled E. coli promoter benchmark
(``genoray/data/``; see ``genoray/data/README.md`` for provenance and citation).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from genoray.config import EmbedConfig, HeadConfig, IndexConfig, ReadConfig
from genoray.embed import embed_sequences
from genoray.encoders import Encoder, encoder_from_name
from genoray.heads import mixture_name
from genoray.index import build_index
from genoray.metrics import DEFINITIONS
from genoray.train import evaluate_store, train_head

log = logging.getLogger(__name__)

BUNDLED = "ecoli_promoter_ipromoter2l.parquet"
ENCODERS = ("kmer", "kmer-pos")
DEFINITION_ORDER = ("accuracy", "f1", "mcc", "auroc", "ci95", "knn_weight", "calibration_T", "majority")


def bundled_dataset() -> Path:
    """Path of the bundled E. coli promoter Parquet file."""
    return Path(__file__).resolve().parent / "data" / BUNDLED


def run_quickstart(
    data: str | Path | None = None,
    workdir: str | Path | None = None,
    encoders: tuple[str, ...] = ("kmer",),
    head_cfg: HeadConfig | None = None,
    read_cfg: ReadConfig | None = None,
    use_ray: bool = True,
    index_cfg: IndexConfig | None = None,
    embed_cfg: EmbedConfig | None = None,
    make_encoder: Callable[[str], Encoder] | None = None,
    test_split: str | None = "test",
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Run embed -> index -> train -> evaluate for each encoder; return a JSON-able result.

    ``make_encoder`` turns each name of ``encoders`` into an encoder (the CLI passes one that
    applies its encoder flags; default :func:`~genoray.encoders.encoder_from_name` with
    ``trust_remote_code``, which lets an ``hf:<local dir>`` model such as HyenaDNA run its own
    code). A transformers encoder may run on CPU actors here (``allow_cpu``): a local demo."""
    index_cfg = index_cfg or IndexConfig()
    read_cfg = read_cfg or ReadConfig()
    embed_cfg = dataclasses.replace(embed_cfg or EmbedConfig(), allow_cpu=True)
    make = make_encoder or (lambda name: encoder_from_name(name, trust_remote_code))
    data = Path(data) if data else bundled_dataset()
    _check_splits(data, read_cfg, index_cfg.split, test_split)
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="genoray-quickstart-"))
    result: dict[str, Any] = {"dataset": str(data), "workdir": str(workdir), "runs": []}
    for name in encoders:
        run_dir = workdir / name.replace(":", "_").replace("/", "_")
        t0 = time.perf_counter()
        report = embed_sequences(data, run_dir / "store", make(name), read_cfg, embed_cfg,
                                 fit_split=index_cfg.split, use_ray=use_ray)
        t1 = time.perf_counter()
        idx = build_index(run_dir / "store", run_dir / "index", index_cfg)
        t2 = time.perf_counter()
        head = train_head(run_dir / "store", run_dir / "index", run_dir / "head", head_cfg, split=index_cfg.split)
        t3 = time.perf_counter()
        evaluation = evaluation_report(run_dir / "store", run_dir / "index", run_dir / "head", split=test_split,
                                       train_split=index_cfg.split)
        t4 = time.perf_counter()
        result["runs"].append({
            "encoder": name,
            "fingerprint": report.fingerprint,
            "dim": idx.dim,
            "records": {k: v for k, v in report.to_dict().items()
                        if k in ("read", "accepted", "rejected", "rejected_by_reason", "written")},
            "embed_sequences_per_s": report.to_dict()["sequences_per_s"],
            "index": {"ntotal": idx.ntotal, "recall_at_10": idx.recall_at_10},
            "head": {"weight_knn": head["weight_knn"], "calibration": head["calibration"], "chosen": head["chosen"],
                     "calibration_method": head["calibration_method"], "mode": head["head_mode"],
                     "tree_test": head["tree_test"]},
            "metrics": evaluation["methods"],
            "evaluation": {k: v for k, v in evaluation.items() if k not in ("methods", "definitions")},
            "seconds": {"embed": round(t1 - t0, 2), "index": round(t2 - t1, 2), "train": round(t3 - t2, 2),
                        "evaluate": round(t4 - t3, 2)},
            "paths": {"store": str(run_dir / "store"), "index": str(run_dir / "index"), "head": str(run_dir / "head")},
        })
    return result


def head_choice(head: dict[str, Any]) -> str:
    """One line on the fused head: the ``--head`` mode, the mixture chosen and, for ``auto``,
    whether it kept trees and why (its cross-fitted test)."""
    mode, chosen = head.get("mode", "linear"), head.get("chosen", "knn+linear")
    line = f"fused head (--head {mode}): mixture {chosen}"
    t = head.get("tree_test")
    if mode == "auto":
        kind = "with trees" if "trees=" in chosen else "kNN + linear, the default head"
        line += f"; auto chose {kind}"
        if t and "z" in t:
            line += (f" (tree test on validation, cross-fitted: log-loss gain z {t['z']:.2f}, MCC with/without trees "
                     f"{t['mcc_with_trees']:.3f}/{t['mcc_without_trees']:.3f}: trees {'kept' if t['keep'] else 'dropped'})")
        elif t:
            line += f" ({t.get('rule')})"
        else:
            line += " (no mixture with trees scored better on validation)"
    else:
        line += " (chosen on validation among the parts --head allows)"
    return line


def _calibration(head: dict[str, Any]) -> str:
    return f"T {head['calibration']:.2f}" if head.get("calibration") is not None else str(head.get("calibration_method"))


def _check_splits(data: Path, read_cfg: ReadConfig, train: str | None, test: str | None) -> None:
    """Fail before embedding when the data lacks the train or test split (a quick read pass)."""
    if read_cfg.test_fraction > 0:
        return
    from collections import Counter

    from genoray.sequences import iter_sequences

    found: Counter = Counter()
    for batch in iter_sequences(data, read_cfg):
        found.update(batch["split"].to_pylist())
    for role, name in (("train", train), ("test", test)):
        if name is not None and not found.get(name):
            shown = {("(none)" if k is None else k): v for k, v in found.items()}
            raise ValueError(f"{data}: no rows in the {role} split {name!r} (rows per split: {shown}); name it with "
                             f"--{role}-split, or hold out a stratified test split with --test-fraction F")


def format_result(result: dict[str, Any]) -> str:
    """Plain text of a :func:`run_quickstart` result: per encoder the record counts, the index,
    and the evaluation (:func:`format_evaluation`)."""
    lines = [f"dataset: {result['dataset']}", f"workdir: {result['workdir']}"]
    for run in result["runs"]:
        r = run["records"]
        lines += [
            "",
            f"== encoder {run['encoder']} (fingerprint {run['fingerprint']}, dim {run['dim']})",
            (f"records: read {r['read']}, accepted {r['accepted']}, rejected {r['rejected']} "
             f"{r['rejected_by_reason'] or ''}, embedded {r['written']}"),
            f"index: {run['index']['ntotal']} vectors, recall@10 vs exact {run['index']['recall_at_10']:.3f}",
            f"{head_choice(run['head'])}, calibration {_calibration(run['head'])}",
            format_evaluation({**run["evaluation"], "methods": run["metrics"], "definitions": DEFINITIONS},
                              definitions=False),
        ]
        s = run["seconds"]
        lines.append(f"seconds: embed {s['embed']}, index {s['index']}, train {s['train']}, evaluate {s['evaluate']}")
    lines += ["", "definitions:"] + [f"  {k}: {DEFINITIONS[k]}" for k in DEFINITION_ORDER]
    return "\n".join(lines)


def evaluation_report(store_path: str | Path, index_dir: str | Path, head_dir: str | Path,
                      split: str | None = "test", train_split: str | None = "train",
                      bootstrap: int = 200, seed: int = 0) -> dict[str, Any]:
    """What ``genoray evaluate`` prints: the split used and its size, the classes (and the
    positive class of a binary task), per method the metrics with bootstrap 95% intervals,
    per-class precision/recall/F1 and the confusion matrix, the fused head's kNN weight and
    calibration temperature, and what each of these means (:data:`genoray.metrics.DEFINITIONS`)."""
    from collections import Counter

    from genoray.heads import load_head
    from genoray.store import EmbeddingStore

    store = EmbeddingStore(store_path)
    methods = evaluate_store(store_path, index_dir, head_dir, split=split, train_split=train_split, detail=True,
                             bootstrap=bootstrap, seed=seed)
    head = load_head(head_dir, encoder_fingerprint=store.fingerprint)
    classes = [str(c) for c in head.classes_]
    counts = Counter(str(x) for x in store.load(split).labels)
    return {
        "store": str(store_path), "split": "all" if split is None else split, "train_split": train_split,
        "n": methods["fused"]["n"], "classes": classes,
        "positive_class": classes[1] if len(classes) == 2 else None,
        "class_counts": {c: counts.get(c, 0) for c in classes},
        "head": {"knn_weight": head.weight_, "calibration_T": head.calibration_, "k": head.k, "C": head.C_,
                 "mixture": head.mixture_, "calibration_method": head.calibration_method_},
        "bootstrap": {"resamples": bootstrap, "seed": seed},
        "methods": methods,
        "definitions": DEFINITIONS,
    }


def _num(v: Any, ci: list | None = None) -> str:
    if v is None or math.isnan(v):
        return "n/a"
    s = f"{v:.3f}"
    if ci and ci[0] is not None:
        s += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return s


def format_evaluation(rep: dict[str, Any], definitions: bool = True) -> str:
    """Plain text of an :func:`evaluation_report` (metrics, per-class table, confusion matrix, definitions)."""
    classes = rep["classes"]
    pos = f"; positive class for AUROC: {rep['positive_class']}" if rep["positive_class"] else \
        "; AUROC: one-vs-rest, macro mean"
    lines = [f"test split: {rep['split']} (n = {rep['n']}; " +
             ", ".join(f"{c}: {n}" for c, n in rep["class_counts"].items()) + f"){pos}",
             (f"fused head: kNN weight {rep['head']['knn_weight']} (share of the kNN vote; the rest is the logistic "
              f"regression and/or trees: mixture {mixture_name(rep['head'].get('mixture') or {})}), "
              + (f"calibration T {rep['head']['calibration_T']:.2f} (temperature of p^(1/T); >1 softens), "
                 if rep['head']['calibration_T'] is not None else "calibration isotonic (per class, renormalised), ")
              + f"k = {rep['head']['k']}"),
             "",
             f"{'method':<10} {'accuracy [95% CI]':>24} {'macro F1 [95% CI]':>24} {'MCC':>7} {'AUROC [95% CI]':>24}"]
    undefined = set()
    for name, m in rep["methods"].items():
        ci = m.get("ci95", {})
        lines.append(f"{name:<10} {_num(m['accuracy'], ci.get('accuracy')):>24} {_num(m['f1'], ci.get('f1')):>24} "
                     f"{_num(m['mcc']):>7} {_num(m['auroc'], ci.get('auroc')):>24}")
        undefined |= {k for k in ("accuracy", "f1", "mcc", "auroc") if m[k] is None or m[k] != m[k]}
    if "auroc" in undefined:
        lines.append("AUROC n/a: undefined because the test split holds a single class (null in --json)")
    fused = rep["methods"]["fused"]
    lines += ["", "fused head, per class:", f"{'class':<16} {'precision':>9} {'recall':>9} {'F1':>9} {'support':>8}"]
    for c, pc in fused["per_class"].items():
        lines.append(f"{c:<16} {pc['precision']:>9.3f} {pc['recall']:>9.3f} {pc['f1']:>9.3f} {pc['support']:>8}")
    width = max(8, *(len(c) for c in classes)) + 1
    lines += ["", "fused head, confusion matrix (rows: true, columns: predicted):",
              " " * width + "".join(f"{c:>{width}}" for c in classes)]
    for c, row in zip(classes, fused["confusion_matrix"]):
        lines.append(f"{c:<{width}}" + "".join(f"{v:>{width}}" for v in row))
    lines.append(f"(95% CIs from {rep['bootstrap']['resamples']} bootstrap resamples, seed {rep['bootstrap']['seed']})")
    if definitions:
        lines += ["", "definitions:"] + [f"  {k}: {rep['definitions'][k]}" for k in DEFINITION_ORDER]
    return "\n".join(lines)
