"""What the head fit's bounded neighbour search (``HeadConfig.fit_scan_rows``) does to accuracy,
on real shared datasets (``kmer`` embeddings of their train split).

For each dataset an ``IVF<nlist>,Flat`` index (``nlist`` as ``auto`` would choose it for the
rows, at least 16) is built over the train rows and its ``nprobe`` tuned to recall@10 >= 0.95
against exact search (200 train queries), as ``build_index`` tunes it. Then the same head
(:class:`genoray.heads.FusedHead`, default settings) is fitted twice over that index:

* ``tuned``: ``fit_scan_rows`` so large that the fit searches at the tuned ``nprobe`` (the
  unbounded path);
* ``bounded``: ``fit_scan_rows`` set so that the fit's ``nprobe`` is a quarter of the tuned one
  (what the bound does to an index four times larger than ``fit_scan_rows`` allows),

and both predict the test split at the tuned ``nprobe``. Printed: test accuracy and MCC of each,
the fit's ``nprobe`` and fit seconds.

    python bench/bench_head_bounded.py [--datasets a,b,c] [--out r.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT = "human_notata_core_promoter_gue,dmel_6ma_idnams,celegans_6ma_idnams,ecoli_promoter_ipromoter2l,human_tata_promoter_gue"


def ivf_index(x: np.ndarray, ids, labels, seed: int = 0):
    """An ``IVF<nlist>,Flat`` :class:`~genoray.index.VectorIndex` over ``x`` with ``nprobe``
    tuned to recall@10 >= 0.95 on 200 of its own rows."""
    import faiss

    from genoray.index import IndexManifest, VectorIndex, exact_search, l2_normalize
    from genoray.index.factory import nlist_for

    xn = l2_normalize(x)
    nlist = max(16, nlist_for(len(x)))
    factory = f"IVF{nlist},Flat"
    ivf = faiss.index_factory(x.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    ivf.train(xn)
    ivf.add(xn)
    q = xn[np.random.default_rng(seed).choice(len(xn), 200, replace=False)]
    _, truth = exact_search(xn, q, 10)
    nprobe = nlist
    for p in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        if p > nlist:
            break
        ivf.nprobe = p
        _, got = ivf.search(q, 10)
        if np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth)]) >= 0.95:
            nprobe = p
            break
    manifest = IndexManifest(format_version=IndexManifest.FORMAT_VERSION, type="IVF", factory=factory, metric="cosine",
                             dim=int(x.shape[1]), ntotal=len(x), search_params={"nprobe": nprobe})
    return VectorIndex([ivf], np.asarray(ids, dtype=object), np.asarray(labels, dtype=object), manifest)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=DEFAULT)
    ap.add_argument("--out")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_heads import load_split

    from genoray.config import HeadConfig
    from genoray.evaluation.metrics import classification_metrics
    from genoray.heads import FusedHead

    rows = []
    print(f"{'dataset':<30} {'train':>6} {'index':>14} {'nprobe tuned/fit':>16} {'acc tuned':>9} {'acc bnd':>8} "
          f"{'MCC tuned':>9} {'MCC bnd':>8} {'fit s t/b':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets.split(","):
            tr, te = load_split(name, "kmer", Path(tmp))
            index = ivf_index(tr.vectors, tr.ids, tr.labels)
            nprobe, nlist = index.manifest.search_params["nprobe"], int(index.manifest.factory[3:].split(",")[0])
            res = {"dataset": name, "train": len(tr), "test": len(te), "factory": index.manifest.factory, "nprobe": nprobe}
            for key, scan in (("tuned", 10**12), ("bounded", max(1, len(tr) * max(1, nprobe // 4) // nlist))):
                t0 = time.perf_counter()
                head = FusedHead.from_config(HeadConfig(fit_scan_rows=scan)).fit(tr.vectors, tr.labels, index=index,
                                                                                  ids=tr.ids)
                fit_s = time.perf_counter() - t0
                m = classification_metrics(te.labels, head.predict_proba(te.vectors), head.classes_)
                res[key] = {"accuracy": m["accuracy"], "mcc": m["mcc"], "auroc": m["auroc"], "fit_s": fit_s,
                            "fit_nprobe": head.selection_.get("fit_nprobe") or nprobe, "fit_scan_rows": scan}
            t, b = res["tuned"], res["bounded"]
            print(f"{name:<30} {len(tr):>6} {res['factory']:>14} {nprobe:>7}/{b['fit_nprobe']:<8} {t['accuracy']:>9.4f} "
                  f"{b['accuracy']:>8.4f} {t['mcc']:>9.4f} {b['mcc']:>8.4f} {t['fit_s']:>4.1f}/{b['fit_s']:<4.1f}", flush=True)
            rows.append(res)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
