"""``run_quickstart``: the whole method end to end on one labeled file.

Embeds (local Ray, the built-in k-mer encoder by default), builds the index on the ``train``
split, fits the fused head, and evaluates kNN vote, linear head, fused head and the majority
floor on the ``test`` split. With no arguments it uses the bundled E. coli promoter benchmark
(``genoray/data/``; see ``genoray/data/README.md`` for provenance and citation).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from genoray.config import HeadConfig, IndexConfig, ReadConfig
from genoray.embed import embed_sequences
from genoray.encoders import encoder_from_name
from genoray.index import build_index
from genoray.train import evaluate_store, train_head

BUNDLED = "ecoli_promoter_ipromoter2l.parquet"
ENCODERS = ("kmer", "kmer-pos")


def bundled_dataset() -> Path:
    return Path(__file__).resolve().parent / "data" / BUNDLED


def run_quickstart(
    data: str | Path | None = None,
    workdir: str | Path | None = None,
    encoders: tuple[str, ...] = ("kmer",),
    head_cfg: HeadConfig | None = None,
    read_cfg: ReadConfig | None = None,
    use_ray: bool = True,
) -> dict[str, Any]:
    """Run embed -> index -> train -> evaluate for each encoder; return a JSON-able result."""
    data = Path(data) if data else bundled_dataset()
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="genoray-quickstart-"))
    result: dict[str, Any] = {"dataset": str(data), "workdir": str(workdir), "runs": []}
    for name in encoders:
        run_dir = workdir / name.replace(":", "_").replace("/", "_")
        t0 = time.perf_counter()
        report = embed_sequences(data, run_dir / "store", encoder_from_name(name), read_cfg, use_ray=use_ray)
        t1 = time.perf_counter()
        idx = build_index(run_dir / "store", run_dir / "index", IndexConfig(split="train"))
        t2 = time.perf_counter()
        head = train_head(run_dir / "store", run_dir / "index", run_dir / "head", head_cfg)
        t3 = time.perf_counter()
        metrics = evaluate_store(run_dir / "store", run_dir / "index", run_dir / "head")
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
                     "calibration_method": head["calibration_method"]},
            "metrics": metrics,
            "seconds": {"embed": round(t1 - t0, 2), "index": round(t2 - t1, 2), "train": round(t3 - t2, 2),
                        "evaluate": round(t4 - t3, 2)},
            "paths": {"store": str(run_dir / "store"), "index": str(run_dir / "index"), "head": str(run_dir / "head")},
        })
    return result


def _calibration(head: dict[str, Any]) -> str:
    return f"T {head['calibration']:.2f}" if head.get("calibration") is not None else str(head.get("calibration_method"))


def format_result(result: dict[str, Any]) -> str:
    """Plain-text tables of a :func:`run_quickstart` result."""
    lines = [f"dataset: {result['dataset']}", f"workdir: {result['workdir']}"]
    for run in result["runs"]:
        r = run["records"]
        lines += [
            "",
            f"encoder {run['encoder']} (fingerprint {run['fingerprint']}, dim {run['dim']})",
            f"records: read {r['read']}, accepted {r['accepted']}, rejected {r['rejected']} "
            f"{r['rejected_by_reason'] or ''}, embedded {r['written']}",
            f"index: {run['index']['ntotal']} vectors, recall@10 vs exact {run['index']['recall_at_10']:.3f}; "
            f"fused head: kNN weight {run['head']['weight_knn']}, calibration {_calibration(run['head'])}",
            f"head chosen on validation (auto = kNN / linear / trees mixtures): {run['head'].get('chosen', 'knn+linear')}",
            f"{'method':<10} {'accuracy':>8} {'F1':>7} {'MCC':>7} {'AUROC':>7}",
        ]
        for method, m in run["metrics"].items():
            lines.append(f"{method:<10} {m['accuracy']:>8.3f} {m['f1']:>7.3f} {m['mcc']:>7.3f} {m['auroc']:>7.3f}")
        s = run["seconds"]
        lines.append(f"seconds: embed {s['embed']}, index {s['index']}, train {s['train']}, evaluate {s['evaluate']}")
    return "\n".join(lines)
