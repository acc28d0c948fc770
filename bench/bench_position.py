"""Position-free vs position-aware k-mer encoder on all seven shared datasets (issue #7).

For each dataset: embed (in process), index the train split, fit the fused head, evaluate on
the test split. Prints accuracy / MCC / AUROC of kNN vote, linear head and fused head for both
encoders side by side, and the embedding throughput of each.

    python bench/bench_position.py [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile

from _common import SHARED

DATASETS = ["ecoli_promoter_ipromoter2l", "ecoli_sigma_ipromoter2l", "uci_splice", "human_tata_promoter_gue",
            "dmel_6ma_idnams", "ienhancer2l_layer1", "ienhancer2l_layer2"]


def main() -> None:
    from genoray.pipeline.quickstart import run_quickstart

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", help="also write the raw results as JSON")
    args = ap.parse_args()
    rows, raw = [], {}
    for name in DATASETS:
        with tempfile.TemporaryDirectory() as d:
            res = run_quickstart(SHARED / f"{name}.parquet", d, encoders=("kmer", "kmer-pos"), use_ray=False)
        raw[name] = res["runs"]
        for run in res["runs"]:
            m = run["metrics"]
            rows.append((name, run["encoder"], run["dim"], m, run["embed_sequences_per_s"]))
    head = f"{'dataset':<28} {'encoder':<9} {'dim':>5} " + " ".join(
        f"{h:>17}" for h in ("kNN acc/MCC/AUC", "linear acc/MCC/AUC", "fused acc/MCC/AUC")) + f" {'seq/s':>8}"
    print(head)
    for name, enc, dim, m, tput in rows:
        cells = " ".join(f"{m[k]['accuracy']:.3f}/{m[k]['mcc']:.2f}/{m[k]['auroc']:.3f}".rjust(17)
                         for k in ("knn_vote", "linear", "fused"))
        print(f"{name:<28} {enc:<9} {dim:>5} {cells} {tput or 0:>8.0f}")
    print("\nfused accuracy, position-aware minus position-free:")
    for name in DATASETS:
        a, b = (r["metrics"]["fused"]["accuracy"] for r in raw[name])
        print(f"  {name:<28} {b - a:+.3f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(raw, f, indent=2)


if __name__ == "__main__":
    main()
