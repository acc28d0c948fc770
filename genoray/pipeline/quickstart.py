"""``run_quickstart``: the whole method end to end on one labeled file.

Embeds (local Ray, the built-in k-mer encoder by default), builds the index on the ``train``
split, fits the fused head, and evaluates kNN vote, linear head, fused head and the majority
floor on the ``test`` split. With no arguments it uses the bundled E. coli promoter benchmark
(``genoray/data/``; see ``genoray/data/README.md`` for provenance and citation).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from genoray.config import EmbedConfig, EncoderChoice, EvaluateConfig, HeadConfig, IndexConfig, ReadConfig
from genoray.embedding.job import embed_sequences
from genoray.encoders import Encoder, encoder_from_name, runs_remote_code
from genoray.evaluation.metrics import DEFINITIONS
from genoray.evaluation.report import DEFINITION_ORDER, evaluation_report, format_evaluation
from genoray.index import build_index
from genoray.pipeline.train import train_head
from genoray.sequences import iter_sequences

log = logging.getLogger(__name__)

BUNDLED = "ecoli_promoter_ipromoter2l.parquet"
ENCODERS = ("kmer", "kmer-pos")


def bundled_dataset() -> Path:
    """Path of the bundled E. coli promoter Parquet file."""
    return Path(str(resources.files("genoray") / "data" / BUNDLED))


def run_quickstart(
    data: str | Path | None = None,
    workdir: str | Path | None = None,
    encoders: tuple[str, ...] = (EncoderChoice.encoder,),
    head_cfg: HeadConfig | None = None,
    read_cfg: ReadConfig | None = None,
    use_ray: bool = True,
    index_cfg: IndexConfig | None = None,
    embed_cfg: EmbedConfig | None = None,
    make_encoder: Callable[[str], Encoder] | None = None,
    eval_cfg: EvaluateConfig | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Run embed -> index -> train -> evaluate for each encoder; return a JSON-able result.

    The splits are the data's (``read_cfg.train_split`` / ``test_split``): the encoder is
    fitted, the index built and the head trained on the training split (``index_cfg.split`` is
    set to it), and ``eval_cfg`` (its ``split`` set to the test split) scores the test split.
    ``make_encoder`` turns each name of ``encoders`` into an encoder (the CLI passes one that
    applies its encoder flags; default :func:`~genoray.encoders.encoder_from_name` with
    ``trust_remote_code``, which lets an ``hf:<local dir>`` model such as HyenaDNA run its own
    code). A transformers encoder may run on CPU actors here (``allow_cpu``): a local demo."""
    read_cfg = read_cfg or ReadConfig()
    index_cfg = dataclasses.replace(index_cfg or IndexConfig(), split=read_cfg.train_split)
    eval_cfg = dataclasses.replace(eval_cfg or EvaluateConfig(), split=read_cfg.test_split)
    embed_cfg = dataclasses.replace(embed_cfg or EmbedConfig(), allow_cpu=True)
    make = make_encoder or (lambda name: encoder_from_name(name, trust_remote_code))
    data = Path(data) if data else bundled_dataset()
    _check_splits(data, read_cfg)
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="genoray-quickstart-"))
    result: dict[str, Any] = {"dataset": str(data), "workdir": str(workdir), "runs": []}
    for name in encoders:
        run_dir = workdir / name.replace(":", "_").replace("/", "_")
        t0 = time.perf_counter()
        encoder = make(name)
        report = embed_sequences(data, run_dir / "store", encoder, read_cfg, embed_cfg, use_ray=use_ray)
        t1 = time.perf_counter()
        idx = build_index(run_dir / "store", run_dir / "index", index_cfg)
        t2 = time.perf_counter()
        head = train_head(run_dir / "store", run_dir / "index", run_dir / "head", head_cfg,
                          runs_remote_code(encoder))  # this command's decision, not the store's
        t3 = time.perf_counter()
        evaluation = evaluation_report(run_dir / "store", run_dir / "index", run_dir / "head", eval_cfg)
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


def _check_splits(data: Path, read_cfg: ReadConfig) -> None:
    """Fail before embedding when the data lacks the train or test split (a quick read pass)."""
    if read_cfg.test_fraction > 0:
        return
    train, test = read_cfg.train_split, read_cfg.test_split
    from collections import Counter

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
