"""Heads side by side on the seven shared datasets (issue #17), one run.

For each dataset and encoder (``kmer``, ``kmer-pos``): embed in process, index the train
split (exact), then fit and score on the test split:

* ``knn``: the similarity-weighted vote alone;
* ``linear`` / ``trees`` / ``auto``: :class:`genoray.heads.FusedHead` with ``head=`` that value
  (what ``genoray train --head`` fits; ``linear`` is the default, today's fused head), fitted
  together by :meth:`FusedHead.fit_modes` (identical heads, shared work done once);
* ``baseline`` (``--baseline``): the version-1 fused head as it was before issue #17,
  reproduced verbatim below: kNN vote + linear head, fusion weight and C on an 80/20 split,
  temperature calibration, refit on all rows.

Prints accuracy / MCC / AUROC with bootstrap 95% intervals, fit seconds and the peak RSS
growth during the fit, the mixture ``auto`` chose and its tree test, the predictor-level
latency per query batch (1 and 64 sequences: clean + embed + index search + head, median) of
each fused head, and checks that ``auto`` is never more than 0.01 MCC below ``linear``.
``--libraries`` adds the measurement behind the choice of
XGBoost: bare XGBoost vs LightGBM trees (same depth/rate/subsampling, early stopping on 20%
of the train split) on ``kmer-pos`` features.

    python bench/bench_heads.py [--datasets a,b | --cells a/kmer,b/kmer-pos] [--bootstrap 200] [--threads 0] [--latency-reps 10]
                                [--baseline] [--libraries] [--workdir DIR] [--out r.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _common import SHARED

DATASETS = ["ecoli_promoter_ipromoter2l", "ecoli_sigma_ipromoter2l", "uci_splice", "human_tata_promoter_gue",
            "dmel_6ma_idnams", "ienhancer2l_layer1", "ienhancer2l_layer2"]
ENCODERS = ("kmer", "kmer-pos")
METHODS = ("knn", "linear", "trees", "auto")


class PeakRSS:
    """Peak resident memory growth (MiB) of this process while the block runs (10 ms samples)."""

    def __enter__(self):
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def _run(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())
        self.mib = (self.peak - self.base) / 2**20


class LegacyFusedHead:
    """Today's (version-1) fused head fit, as it was before issue #17 (the baseline column)."""

    def __init__(self, k=10, temperature=0.05, val_fraction=0.2, seed=0):
        self.k, self.temperature, self.val_fraction, self.seed = k, temperature, val_fraction, seed

    def fit(self, X, y):
        from genoray.heads import KNNVoteHead, LinearHead, align_proba, calibrate
        from genoray.heads.common import _encode, _log_loss, _stratified_split

        weights = np.round(np.linspace(0.0, 1.0, 11), 2)
        temps = np.exp(np.linspace(np.log(0.25), np.log(4.0), 33))
        y = np.asarray(y, dtype=object)
        self.classes_ = np.array(sorted(set(y)), dtype=object)
        codes = _encode(y, self.classes_)
        tr, va = _stratified_split(codes, self.val_fraction, self.seed)
        best = None
        for C in (0.01, 0.1, 1.0):
            lin = LinearHead(C=C).fit(X[tr], y[tr])
            p = align_proba(lin.classes_, lin.predict_proba(X[va]), self.classes_)
            loss = _log_loss(p, codes[va])
            if best is None or loss < best[0]:
                best = (loss, C, p)
        _, C, p_lin = best
        knn = KNNVoteHead(k=self.k, temperature=self.temperature).fit(X[tr], y[tr])
        p_knn = align_proba(knn.classes_, knn.predict_proba(X[va]), self.classes_)
        scores = [_log_loss(w * p_knn + (1 - w) * p_lin, codes[va]) for w in weights]
        self.weight_ = float(weights[int(np.argmin(scores))])
        fused = self.weight_ * p_knn + (1 - self.weight_) * p_lin
        self.T_ = float(temps[int(np.argmin([_log_loss(calibrate(fused, t), codes[va]) for t in temps]))])
        self.linear_ = LinearHead(C=C).fit(X, y)
        self.knn_ = KNNVoteHead(k=self.k, temperature=self.temperature).fit(X, y)
        return self

    def predict_proba(self, X):
        from genoray.heads import calibrate

        return calibrate(self.weight_ * self.knn_.predict_proba(X) + (1 - self.weight_) * self.linear_.predict_proba(X),
                         self.T_)


def load_split(name: str, encoder: str, workdir: Path):
    """Embed one dataset (in process) and return its train and test embeddings, the test
    sequences and the store's encoder."""
    from genoray.embedding.job import embed_sequences
    from genoray.embedding.store import EmbeddingStore
    from genoray.encoders import encoder_from_name

    store = workdir / name / encoder
    if not (store / "store.json").exists():
        embed_sequences(SHARED / f"{name}.parquet", store, encoder_from_name(encoder), use_ray=False)
    s = EmbeddingStore(store)
    return s.load("train"), s.load("test")


def test_sequences(name: str) -> list[str]:
    """Raw sequences of the dataset's test split (the latency queries)."""
    import pyarrow.parquet as pq

    t = pq.read_table(SHARED / f"{name}.parquet", columns=["sequence", "split"]).to_pydict()
    return [q for q, sp in zip(t["sequence"], t["split"]) if sp == "test"]


def store_encoder(name: str, encoder: str, workdir: Path):
    """The encoder of an embedded store, as the predictor rebuilds it (fitted state included)."""
    from genoray.embedding.store import EmbeddingStore
    from genoray.encoders import encoder_from_spec

    return encoder_from_spec(EmbeddingStore(workdir / name / encoder, verify=False).encoder_spec)


def run_cell(tr, te, threads: int, n_boot: int, seed: int = 0, methods: tuple[str, ...] = METHODS,
             latency_reps: int = 0, test_seqs=None, encoder=None) -> dict:
    """Fit every head of ``methods`` on ``tr`` and score it on ``te``. ``linear`` / ``trees`` /
    ``auto`` share one validation stage (:meth:`FusedHead.fit_modes`: each head equals its own
    fit; its fit seconds add up the steps a fit of that mode alone runs); the peak RSS growth
    is that of the shared fit. With ``latency_reps``, also the predictor-level latency per
    query batch (clean + embed + search + head) of each fused head."""
    from genoray.evaluation.metrics import classification_metrics
    from genoray.evaluation.study import bootstrap_ci
    from genoray.heads import FusedHead, KNNVoteHead
    from genoray.index import VectorIndex

    index = VectorIndex.from_vectors(tr.vectors, tr.ids, tr.labels)
    heads, fit_s, peak = {}, {}, {}
    modes = tuple(m for m in methods if m in ("linear", "trees", "auto"))
    if modes:
        with PeakRSS() as mem:
            fitted = FusedHead.fit_modes(modes, tr.vectors, tr.labels, index=index, ids=tr.ids, seed=seed,
                                         tree_threads=threads)
        for m, h in fitted.items():
            heads[m], fit_s[m], peak[m] = h, h.fit_seconds_, mem.mib
    for method in methods:
        if method == "baseline":
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                heads[method] = LegacyFusedHead(seed=seed).fit(tr.vectors, tr.labels)
                fit_s[method], peak[method] = time.perf_counter() - t0, None
            peak[method] = mem.mib
        elif method == "knn":
            heads[method] = KNNVoteHead(k=10).attach(index, np.array(sorted(set(tr.labels)), dtype=object))
            fit_s[method], peak[method] = 0.0, 0.0
    out = {}
    for method in methods:
        head = heads[method]
        proba = head.predict_proba(te.vectors)
        classes = head.classes_
        m = classification_metrics(te.labels, proba, classes)
        if n_boot:
            m["ci"] = bootstrap_ci(te.labels, proba, classes, n_boot, seed)
        m.update(fit_s=fit_s[method], peak_mib=peak[method])
        if method in modes:
            m["chosen"] = head.selection_["chosen"]
            m["calibration"] = head.calibration_method_
            m["tree_test"] = head.selection_["tree_test"]
            if latency_reps and test_seqs is not None:
                m["latency_ms"] = predictor_latency(encoder, index, head, test_seqs, latency_reps)
        out[method] = m
    return out


def predictor_latency(encoder, index, head, seqs, reps: int, batches=(1, 64)) -> dict:
    """Median milliseconds of :meth:`genoray.predict.predictor.Predictor.predict` per query batch
    (``reps`` batches of each size, drawn in turn from the test sequences)."""
    from genoray.predict.predictor import Predictor

    pred = Predictor(encoder, index, head)
    out = {}
    for b in batches:
        times = []
        for r in range(reps + 1):
            batch = [seqs[(r * b + i) % len(seqs)] for i in range(b)]
            t0 = time.perf_counter()
            pred.predict(batch)
            if r:  # the first call warms up
                times.append(time.perf_counter() - t0)
        out[str(b)] = 1000 * float(np.median(times))
    return out


def compare_libraries(tr, te, threads: int) -> dict:
    """Bare XGBoost vs LightGBM trees (the measurement behind choosing XGBoost)."""
    import lightgbm as lgb
    import xgboost as xgb
    from sklearn.metrics import accuracy_score, matthews_corrcoef

    from genoray.heads.common import _encode, _stratified_split

    classes = np.array(sorted(set(tr.labels)), dtype=object)
    c, ct = _encode(tr.labels, classes), _encode(te.labels, classes)
    a, v = _stratified_split(c, 0.2, 0)
    res = {}
    for lib in ("xgboost", "lightgbm"):
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            if lib == "xgboost":
                m = xgb.XGBClassifier(n_estimators=500, learning_rate=0.1, max_depth=6, tree_method="hist", max_bin=64,
                                      n_jobs=threads or None, early_stopping_rounds=20, subsample=0.8,
                                      colsample_bytree=0.5, random_state=0)
                m.fit(tr.vectors[a], c[a], eval_set=[(tr.vectors[v], c[v])], verbose=False)
            else:
                m = lgb.LGBMClassifier(n_estimators=500, learning_rate=0.1, num_leaves=31, max_bin=63,
                                       n_jobs=threads or None, subsample=0.8, subsample_freq=1, colsample_bytree=0.5,
                                       random_state=0, verbose=-1)
                m.fit(tr.vectors[a], c[a], eval_set=[(tr.vectors[v], c[v])],
                      callbacks=[lgb.early_stopping(20, verbose=False)])
            fit_s = time.perf_counter() - t0
        pred = m.predict_proba(te.vectors).argmax(1)
        res[lib] = {"accuracy": float(accuracy_score(ct, pred)), "mcc": float(matthews_corrcoef(ct, pred)),
                    "fit_s": fit_s, "peak_mib": mem.mib}
    return res


def _ci(m: dict, key: str) -> str:
    return f"[{m['ci'][key][0]:.2f},{m['ci'][key][1]:.2f}]" if "ci" in m else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--encoders", default=",".join(ENCODERS))
    ap.add_argument("--cells", help="dataset/encoder pairs in this order (instead of --datasets x --encoders)")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--threads", type=int, default=0, help="tree threads (0 = all cores)")
    ap.add_argument("--baseline", action="store_true", help="also the version-1 head as it was before issue #17")
    ap.add_argument("--latency-reps", type=int, default=10, help="query batches per head for the latency (0 = skip)")
    ap.add_argument("--libraries", action="store_true", help="also compare bare XGBoost and LightGBM (kmer-pos)")
    ap.add_argument("--workdir", help="keep embedded stores here (default: a temp dir)")
    ap.add_argument("--out", help="write raw results as JSON")
    args = ap.parse_args()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-heads-"))
    methods = (("baseline",) if args.baseline else ()) + METHODS
    raw: dict = {}
    print("acc / MCC [95% CI] / AUROC [95% CI] per head; then fit s and peak MiB (linear/trees/auto: one shared "
          "fit, its peak)", flush=True)
    worst = []
    cells = [tuple(c.split("/")) for c in args.cells.split(",")] if args.cells else \
        [(d, e) for d in args.datasets.split(",") for e in args.encoders.split(",")]
    for name, enc in cells:
        seqs = test_sequences(name) if args.latency_reps else None
        tr, te = load_split(name, enc, work)
        encoder = store_encoder(name, enc, work) if args.latency_reps else None
        cell = run_cell(tr, te, args.threads, args.bootstrap, methods=methods, latency_reps=args.latency_reps,
                        test_seqs=seqs, encoder=encoder)
        if args.libraries and enc == "kmer-pos":
            cell["libraries"] = compare_libraries(tr, te, args.threads)
        raw[f"{name}/{enc}"] = cell
        print(f"\n{name} {enc} (train {len(tr.labels)}, test {len(te.labels)})", flush=True)
        for m in methods:
            c = cell[m]
            extra = f"  chose {c['chosen']} ({c['calibration']})" if "chosen" in c else ""
            if c.get("tree_test"):
                t = c["tree_test"]
                extra += (f"; tree test z {t.get('z', float('nan')):.2f}, MCC with/without "
                          f"{t.get('mcc_with_trees', float('nan')):.3f}/{t.get('mcc_without_trees', float('nan')):.3f}"
                          f" -> {'keep' if t['keep'] else 'drop'} trees")
            if "latency_ms" in c:
                extra += "; latency " + ", ".join(f"{b}: {v:.1f} ms" for b, v in c["latency_ms"].items())
            print(f"  {m:<8} {c['accuracy']:.3f}{_ci(c, 'accuracy')} / {c['mcc']:.3f}{_ci(c, 'mcc')} / "
                  f"{c['auroc']:.3f}{_ci(c, 'auroc')}  fit {c['fit_s']:.1f} s  peak +{c['peak_mib']:.0f} MiB{extra}",
                  flush=True)
        if "libraries" in cell:
            lib = cell["libraries"]
            print("  bare trees: " + "; ".join(
                f"{k} acc {v['accuracy']:.3f} MCC {v['mcc']:.3f} fit {v['fit_s']:.1f} s peak +{v['peak_mib']:.0f} MiB"
                for k, v in lib.items()), flush=True)
        worst.append((cell["auto"]["mcc"] - cell["linear"]["mcc"], name, enc))
        if args.out:  # after every cell, so a long run keeps what it measured
            Path(args.out).write_text(json.dumps(raw, indent=2, default=str))
    print("\nauto MCC minus linear MCC (today's default fused head; target: never below -0.01):")
    for d, name, enc in worst:
        print(f"  {name:<28} {enc:<8} {d:+.3f}")
    print(f"worst: {min(worst)[0]:+.3f} -> {'PASS' if min(worst)[0] >= -0.01 else 'FAIL'}")


if __name__ == "__main__":
    main()
