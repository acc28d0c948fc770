"""Shift detection, the per-query OOD score and target adaptation on the shared data (k-mer
embeddings), before and after, in one run.

1. **Null check**: for each of ``--seeds`` seeds, split one dataset's rows randomly in two halves
   and test one against the other (alpha = 0.05 per test, and the combined Bonferroni
   decision). Expected about 5% per test.
2. **Shift tests between datasets** (p-values and AUC).
3. **Per-query OOD score**: AUROC of the score separating the source's own test rows from
   shifted rows, and the share flagged, for real cross-dataset pairs and controlled synthetic
   shifts with known ground truth (composition, length only, label prior, motif loss).
   "before" = the k-th-neighbour rank of the fused head (the score genoray returned until
   now); "max" / "fisher" = :class:`genoray.scoring.ood.OODScorer` (length-matched, calibrated at 5%)
   combining its views by the largest rank / Fisher's method; "oracle" = a supervised
   in-domain-vs-shifted classifier's cross-validated AUROC on the same features (how
   separable the pair is at all; no OOD score has those labels). ``--max-rows`` caps the rows.
4. **Target adaptation** (``--target``): a fused head trained on the source; an unlabeled
   target sample (half of the shifted rows) estimates the class priors; the other half is
   scored (disjoint rows). Accuracy vs the majority floor of the scored rows, ECE, MCC, for no
   adaptation, always re-weighting, and the do-no-harm rule (:mod:`genoray.scoring.priors`). Each
   source head is fitted with its training sequences, so it has a temperature per query length
   (:mod:`genoray.heads.length_calibration`); every case is run without it ("off") and with it
   ("on") in the same run, and the source's own test rows give the in-domain ECE of both.

    python bench/bench_shift.py [--seeds 20] [--sections null,ood,target] [--max-rows 600]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow.parquet as pq
from _common import SHARED

PAIRS = [("ecoli_promoter_ipromoter2l", "human_tata_promoter_gue"), ("ienhancer2l_layer1", "human_tata_promoter_gue"),
         ("ecoli_promoter_ipromoter2l", "ecoli_sigma_ipromoter2l")]
NULL = ["ecoli_promoter_ipromoter2l", "dmel_6ma_idnams"]
# (source, shifted rows, kind): real cross-dataset pairs; the OOD score must see these
REAL = [("ienhancer2l_layer1", "ecoli_promoter_ipromoter2l"), ("ecoli_promoter_ipromoter2l", "ienhancer2l_layer1"),
        ("human_tata_promoter_gue", "uci_splice"), ("uci_splice", "human_tata_promoter_gue"),
        ("ecoli_promoter_ipromoter2l", "human_tata_promoter_gue"), ("human_tata_promoter_gue", "ecoli_promoter_ipromoter2l"),
        ("ecoli_promoter_ipromoter2l", "dmel_6ma_idnams"), ("dmel_6ma_idnams", "ecoli_promoter_ipromoter2l"),
        ("ecoli_promoter_ipromoter2l", "uci_splice"), ("ienhancer2l_layer1", "human_tata_promoter_gue")]
SOURCES = ["ecoli_promoter_ipromoter2l", "human_tata_promoter_gue", "ienhancer2l_layer1", "uci_splice"]


def load(name: str) -> dict[str, tuple[list[str], np.ndarray]]:
    t = pq.read_table(SHARED / f"{name}.parquet").to_pandas()
    return {s: (list(t.sequence[t.split == s]), np.array(t.label[t.split == s], dtype=object)) for s in ("train", "test")}


def embed_seqs(seqs: list[str]) -> np.ndarray:
    from genoray.encoders.kmer import KmerEncoder

    return KmerEncoder().embed(seqs)


def embed(name: str) -> np.ndarray:
    seqs = pq.read_table(SHARED / f"{name}.parquet", columns=["sequence"])["sequence"].to_pylist()
    return embed_seqs(seqs)


# ---- controlled shifts (known ground truth) ------------------------------------------------
def gc_shift(seqs: list[str], rate: float, rng: np.random.Generator) -> list[str]:
    """Composition: each A/T becomes G/C with probability ``rate``."""
    out = []
    for s in seqs:
        a = np.frombuffer(s.encode(), dtype=np.uint8).copy()
        m = ((a == 65) | (a == 84)) & (rng.random(len(a)) < rate)
        a[m] = np.where(rng.random(int(m.sum())) < 0.5, 67, 71)
        out.append(a.tobytes().decode())
    return out


def crop_all(seqs: list[str], length: int, rng: np.random.Generator) -> list[str]:
    from genoray.scoring.ood import crop

    return crop(seqs, length, rng)


def motif_loss(seqs: list[str], start: int, stop: int, rng: np.random.Generator) -> list[str]:
    """Motif loss: the bases in ``[start, stop)`` (e.g. the E. coli -10 box) replaced by random ones."""
    out = []
    for s in seqs:
        mid = "".join(rng.choice(list("ACGT"), size=stop - start))
        out.append(s[:start] + mid + s[stop:])
    return out


def prior_subsample(y: np.ndarray, cls: str, share: float, rng: np.random.Generator) -> np.ndarray:
    """Row indices with class ``cls`` at ``share`` of the rows (label-prior shift only)."""
    pos, neg = np.flatnonzero(y == cls), np.flatnonzero(y != cls)
    n_pos = int(round(share / (1 - share) * len(neg)))
    if n_pos <= len(pos):
        idx = np.r_[rng.choice(pos, n_pos, replace=False), neg]
    else:
        idx = np.r_[pos, rng.choice(neg, int(round(len(pos) * (1 - share) / share)), replace=False)]
    return np.sort(idx)


def synthetic(src: str, data, rng) -> list[tuple[str, str, list[str], np.ndarray]]:
    """(name, kind, sequences, labels) of controlled shifts of ``src``'s test rows."""
    s, y = data[src]["test"]
    L = int(np.median([len(q) for q in s]))
    out = [("GC +50% of A/T", "composition", gc_shift(s, 0.5, rng), y),
           ("GC +25% of A/T", "composition", gc_shift(s, 0.25, rng), y),
           (f"crop to {L // 2} bp", "length only", crop_all(s, L // 2, rng), y),
           (f"crop to {L // 3} bp", "length only", crop_all(s, L // 3, rng), y),
           (f"2 rows joined ({2 * L} bp)", "length only", [a + b for a, b in zip(s, s[1:] + s[:1])], y)]
    classes = sorted(set(y))
    common = max(classes, key=lambda c: (np.sum(y == c), c))  # the most frequent class, cut to 20%
    idx = prior_subsample(y, common, 0.2, rng)
    out.append((f"{common} at 20%", "label prior", [s[i] for i in idx], y[idx]))
    if src == "ecoli_promoter_ipromoter2l":  # TSS at position 60 of 81: -10 box around 45..56
        out.append(("-10 box randomised", "motif loss", motif_loss(s, 44, 56, rng), y))
    return out


def auroc(a: np.ndarray, b: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.zeros(len(a)), np.ones(len(b))], np.r_[a, b]))


def ece(y: np.ndarray, proba: np.ndarray, classes, bins: int = 15) -> float:
    """Top-label expected calibration error (equal-width bins)."""
    conf = proba.max(axis=1)
    right = np.asarray(classes, dtype=object)[proba.argmax(axis=1)] == y
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.mean() * abs(conf[m].mean() - right[m].mean())
    return float(total)


# ---- sections -------------------------------------------------------------------------------
def null_and_pairs(x, seeds: int, max_samples: int) -> None:
    from genoray.evaluation.shift import ShiftConfig, ShiftDetector

    print(f"null: random halves of one dataset, {seeds} seeds, alpha 0.05, {max_samples} rows per side")
    print(f"{'dataset':<28} {'MMD FPR':>8} {'C2ST FPR':>9} {'OOD FPR':>8} {'any (Bonferroni)':>17} {'mean OOD frac':>14}")
    for name in NULL:
        flags, fracs = [], []
        for seed in range(seeds):
            rng = np.random.default_rng(1000 + seed)
            perm = rng.permutation(len(x[name]))
            a, b = x[name][perm[: len(perm) // 2]], x[name][perm[len(perm) // 2:]]
            rep = ShiftDetector(ShiftConfig(max_samples=max_samples, seed=seed)).fit(a).score(b)
            flags.append((rep.mmd_p_value < 0.05, rep.c2st_p_value < 0.05, rep.ood_p_value < 0.05, rep.is_shift))
            fracs.append(rep.ood_fraction)
        f = np.mean(flags, axis=0)
        print(f"{name:<28} {f[0]:>8.2f} {f[1]:>9.2f} {f[2]:>8.2f} {f[3]:>17.2f} {np.mean(fracs):>14.3f}")
    print("\ndifferent datasets (seed 0):")
    print(f"{'reference -> new':<58} {'MMD p':>8} {'C2ST AUC':>9} {'C2ST p':>8} {'OOD frac':>9} {'shift':>6}")
    for a, b in PAIRS:
        rep = ShiftDetector(ShiftConfig(max_samples=max_samples)).fit(x[a]).score(x[b])
        print(f"{a + ' -> ' + b:<58} {rep.mmd_p_value:>8.4f} {rep.c2st_auc:>9.3f} {rep.c2st_p_value:>8.1e} "
              f"{rep.ood_fraction:>9.3f} {str(rep.is_shift):>6}")


def fit_source(src: str, data, cfg):
    from genoray.encoders.kmer import KmerEncoder
    from genoray.heads import FusedHead
    from genoray.scoring.ood import OODScorer

    enc = KmerEncoder()
    s_tr, y_tr = data[src]["train"]
    xtr = enc.embed(s_tr)
    t0 = time.perf_counter()
    ood = OODScorer(cfg).fit(xtr, y_tr, s_tr, enc)
    fit_s = time.perf_counter() - t0
    head = FusedHead(seed=0).fit(xtr, y_tr, sequences=s_tr, encoder=enc)  # with a length calibration
    return enc, head, ood, fit_s


def before_score(head, x: np.ndarray) -> np.ndarray:
    sims, _ = head.knn_.kneighbors(x)
    return head.ood_score(sims[:, -1])


def oracle_auroc(enc, inside: list[str], shifted: list[str], ref_length: int, rng) -> float:
    """How separable the two sets are *at all* with these features: 5-fold cross-validated AUROC
    of a supervised logistic regression on k-mer vectors trained on the labels in-domain vs
    shifted (which no OOD score has), both at the length the OOD score compares them (shifted
    rows longer than the reference cut to its centre window; in-domain rows cropped to the
    shifted rows' length when those are shorter), so length itself is not a feature."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ls = int(np.median([len(q) for q in shifted]))
    a = crop_all(inside, ls, rng) if ls < ref_length else inside
    b = [q[(len(q) - ref_length) // 2:][:ref_length] for q in shifted] if ls > ref_length else shifted
    x = np.vstack([enc.embed(a), enc.embed(b)])
    t = np.r_[np.zeros(len(a)), np.ones(len(b))]
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    return auroc(*(lambda p: (p[t == 0], p[t == 1]))(cross_val_predict(clf, x, t, cv=5, method="predict_proba")[:, 1]))


def cap(seqs: list[str], n: int, seed: int = 3) -> list[str]:
    """At most ``n`` of the rows (seeded), to keep a run short."""
    if len(seqs) <= n:
        return seqs
    return [seqs[i] for i in np.sort(np.random.default_rng(seed).choice(len(seqs), n, replace=False))]


def ood_section(data, cfg, rows_out: list, max_rows: int = 600) -> None:
    from dataclasses import replace

    print(f"\nper-query OOD score: AUROC (in-domain test rows vs shifted rows, <= {max_rows} each) and share flagged; "
          f"before = fused head's k-th-neighbour rank, max / fisher = OODScorer({cfg.method}, length-matched, rate "
          f"{cfg.rate}) combining its views by the largest rank / Fisher; oracle = supervised separability (see "
          f"oracle_auroc), real pairs only")
    print(f"{'source':<27} {'shifted rows':<34} {'kind':<12} {'AUROC before':>12} {'max':>6} {'fisher':>6} "
          f"{'oracle':>6} {'flagged before':>14} {'max':>6} {'fisher':>6}")
    for src in SOURCES:
        enc, head, ood, fit_s = fit_source(src, data, replace(cfg, combine="max"))
        _, _, fis, _ = fit_source(src, data, replace(cfg, combine="fisher"))
        s_te = cap(data[src]["test"][0], max_rows)
        x_te = enc.embed(s_te)
        b_in, a_in, f_in = before_score(head, x_te), ood.score_sequences(s_te, enc, x_te), fis.score_sequences(s_te, enc, x_te)
        print(f"{src:<27} {'(own test rows)':<34} {'in-domain':<12} {'':>12} {'':>6} {'':>6} {'':>6} "
              f"{np.mean(b_in > 0.95):>14.3f} {ood.flag(a_in).mean():>6.3f} {fis.flag(f_in).mean():>6.3f}   "
              f"(fit {fit_s:.1f} s)")
        rng = np.random.default_rng(7)
        cases = [(b, "real", cap(data[b]["test"][0], max_rows), None) for a, b in REAL if a == src]
        cases += synthetic(src, data, rng)
        for name, kind, seqs, _ in cases:
            seqs = cap(seqs, max_rows)
            xs = enc.embed(seqs)
            b_s, a_s, f_s = before_score(head, xs), ood.score_sequences(seqs, enc, xs), fis.score_sequences(seqs, enc, xs)
            r = {"source": src, "shifted": name, "kind": kind, "auroc_before": auroc(b_in, b_s),
                 "auroc_after": auroc(a_in, a_s), "auroc_fisher": auroc(f_in, f_s),
                 "oracle": oracle_auroc(enc, s_te, seqs, ood.reference_length_, rng) if kind == "real" else float("nan"),
                 "flagged_before": float(np.mean(b_s > 0.95)), "flagged_after": float(ood.flag(a_s).mean()),
                 "flagged_fisher": float(fis.flag(f_s).mean())}
            rows_out.append(r)
            print(f"{src:<27} {name:<34} {kind:<12} {r['auroc_before']:>12.3f} {r['auroc_after']:>6.3f} "
                  f"{r['auroc_fisher']:>6.3f} {r['oracle']:>6.3f} {r['flagged_before']:>14.3f} "
                  f"{r['flagged_after']:>6.3f} {r['flagged_fisher']:>6.3f}")


def target_section(data, cfg, rows_out: list) -> None:
    from genoray.evaluation.metrics import classification_metrics
    from genoray.heads import align_proba
    from genoray.heads import length_calibration as lcm
    from genoray.scoring.priors import PriorShift

    print("\n--target: fused head on the source; target sample = half of the shifted rows (labels unused), "
          "scored = the other half")
    print("(each head has a length calibration; 'ECE off' = the same head without it; the rest is with it)")
    print(f"{'source -> target':<52} {'floor':>6} | {'acc':>5} {'ECE off':>5} {'ECE':>5} {'MCC':>6} | "
          f"{'re-weighted always':>22} | {'rule':>5} {'ECE off':>5} {'ECE':>5} {'MCC':>6} {'dMCC':>6}  decision")
    cases = []
    rng = np.random.default_rng(11)
    for src in SOURCES:
        for name, kind, seqs, y in synthetic(src, data, rng):
            if kind in ("label prior", "composition", "length only", "motif loss") and "25%" not in name and "/3" not in name:
                cases.append((src, f"{src} [{name}]", seqs, y))
    cases += [("ecoli_promoter_ipromoter2l", "human_tata_promoter_gue", *data["human_tata_promoter_gue"]["test"]),
              ("human_tata_promoter_gue", "ecoli_promoter_ipromoter2l", *data["ecoli_promoter_ipromoter2l"]["test"])]
    s_e, y_e = data["human_tata_promoter_gue"]["test"]
    idx = prior_subsample(y_e, "promoter", 0.27, rng)
    cases.append(("ecoli_promoter_ipromoter2l", "human_tata_promoter_gue [promoter at 27%]", [s_e[i] for i in idx], y_e[idx]))
    heads = {}
    for src, name, seqs, y in cases:
        if src not in heads:
            enc, head, ood, _ = fit_source(src, data, cfg)
            y_tr = data[src]["train"][1]
            heads[src] = (enc, head, ood, np.array([np.mean(y_tr == c) for c in head.classes_]))
            s_in, y_in = data[src]["test"]  # in-domain: the source's own test rows, no target
            p_in = head.predict_proba(enc.embed(s_in))
            r = {"case": f"{src} (own test rows)", "in_domain": True, "ece_off": ece(np.asarray(y_in, dtype=object), p_in, head.classes_),
                 "ece_on": ece(np.asarray(y_in, dtype=object), lcm.apply(head, p_in, [len(q) for q in s_in]), head.classes_)}
            rows_out.append(r)
            print(f"{r['case'][:52]:<52} in-domain ECE without / with the length calibration {r['ece_off']:.3f} / {r['ece_on']:.3f}")
        enc, head, ood, prior = heads[src]
        classes = head.classes_
        perm = np.random.default_rng(5).permutation(len(seqs))
        tgt, scored = perm[: len(perm) // 2], perm[len(perm) // 2:]
        s_tgt = [seqs[i] for i in tgt]
        x_tgt = enc.embed(s_tgt)
        p_tgt0 = align_proba(head.classes_, head.predict_proba(x_tgt), classes)
        flags = ood.flag(ood.score_sequences(s_tgt, enc, x_tgt))
        s_sc = [seqs[i] for i in scored]
        x_sc = enc.embed(s_sc)
        p0 = align_proba(head.classes_, head.predict_proba(x_sc), classes)
        flags_sc = ood.flag(ood.score_sequences(s_sc, enc, x_sc))
        ys = np.asarray(y, dtype=object)[scored]
        ratio = float(np.median([len(q) for q in s_tgt])) / ood.reference_length_
        floor = max(np.mean(ys == c) for c in classes)
        r = {"case": name, "floor": float(floor), "kind": kind_of(name), "ood_fraction": float(flags.mean())}
        for lc in ("off", "on"):  # the same head without / with its length calibration
            p_tgt = lcm.apply(head, p_tgt0, [len(q) for q in s_tgt]) if lc == "on" else p_tgt0
            p = lcm.apply(head, p0, [len(q) for q in s_sc]) if lc == "on" else p0
            shift = PriorShift.estimate(p_tgt, classes, prior, ood_flags=flags, ood_rate=cfg.rate, length_ratio=ratio,
                                        ood_p_value=ood.flagged_p_value(int(flags.sum()), len(flags)))
            always = PriorShift(**{**shift.to_dict(), "applied": True})
            for label, pp in (("none", p), ("always", always.apply(p)), ("rule", shift.apply(p, flags_sc))):
                m = classification_metrics(ys, pp, classes)
                r.update({f"{lc}_{label}_accuracy": m["accuracy"], f"{lc}_{label}_mcc": m["mcc"],
                          f"{lc}_{label}_ece": ece(ys, pp, classes)})
            r[f"{lc}_decision"] = ("re-weight" if shift.applied else "temper all rows" if shift.temper_ood != 1 else
                                   "keep") + f" (LRT p={shift.p_value:.1e}, OOD {flags.mean():.2f})"
        rows_out.append(r)
        n, a, u = ({m: r[f"on_{k}_{m}"] for m in ("accuracy", "mcc", "ece")} for k in ("none", "always", "rule"))
        print(f"{name[:52]:<52} {floor:>6.3f} | {n['accuracy']:>5.3f} {r['off_none_ece']:>5.3f} {n['ece']:>5.3f} "
              f"{n['mcc']:>6.3f} | acc {a['accuracy']:.3f} MCC {a['mcc']:>6.3f} | {u['accuracy']:>5.3f} "
              f"{r['off_rule_ece']:>5.3f} {u['ece']:>5.3f} {u['mcc']:>6.3f} {u['mcc'] - n['mcc']:>+6.3f}  {r['on_decision']}")


def kind_of(name: str) -> str:
    """The kind of a ``--target`` case from its name (as :func:`synthetic` names them)."""
    if not name.endswith("]") or name.startswith("human_tata_promoter_gue [promoter at 27%"):
        return "real"
    for key, kind in (("crop to", "length only"), ("joined", "length only"), ("GC +", "composition"),
                      (" at ", "label prior"), ("randomised", "motif loss")):
        if key in name:
            return kind
    return "real"


def main() -> None:
    from genoray.scoring.ood import OODConfig

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--max-samples", type=int, default=500)
    ap.add_argument("--method", default="mahalanobis", choices=["mahalanobis", "knn"])
    ap.add_argument("--sections", default="null,ood,target", help="comma-separated: null, ood, target")
    ap.add_argument("--max-rows", type=int, default=600, help="scored rows per set in the OOD section (seeded)")
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    t0 = time.perf_counter()
    if "null" in sections:
        x = {n: embed(n) for n in set(NULL) | {d for p in PAIRS for d in p}}
        null_and_pairs(x, args.seeds, args.max_samples)
    data = {n: load(n) for n in {d for p in REAL for d in p} | set(SOURCES)}
    ood_rows: list = []
    target_rows: list = []
    if "ood" in sections:
        ood_section(data, OODConfig(method=args.method, max_fit_rows=2000), ood_rows, args.max_rows)
        real = [r for r in ood_rows if r["kind"] == "real"]
        length = [r for r in ood_rows if r["kind"] == "length only"]
        for key in ("auroc_before", "auroc_after", "auroc_fisher"):
            print(f"{key}: real pairs >= 0.8: {sum(r[key] >= 0.8 for r in real)} of {len(real)} "
                  f"(min {min(r[key] for r in real):.3f}); length only: max {max(r[key] for r in length):.3f}")
        print(f"oracle (supervised, k-mer LR) >= 0.8: {sum(r['oracle'] >= 0.8 for r in real)} of {len(real)}; "
              + ", ".join(f"{r['source'][:10]}->{r['shifted'][:10]} {r['oracle']:.2f}" for r in real if r['oracle'] < 0.8))
    if "target" in sections:
        target_section(data, OODConfig(method=args.method, max_fit_rows=2000), target_rows)
        rows = [r for r in target_rows if not r.get("in_domain")]
        for lc in ("off", "on"):
            d = [r[f"{lc}_rule_mcc"] - r[f"{lc}_none_mcc"] for r in rows]
            print(f"\nlength calibration {lc}: rule vs no adaptation: worst dMCC {min(d):+.3f}, mean dMCC "
                  f"{np.mean(d):+.3f}; accuracy below floor: "
                  f"{sum(r[f'{lc}_rule_accuracy'] < r['floor'] - 1e-9 for r in rows)} of {len(rows)}; max ECE "
                  f"{max(r[f'{lc}_rule_ece'] for r in rows):.3f}; ECE > 0.10: "
                  f"{sum(r[f'{lc}_rule_ece'] > 0.10 for r in rows)} of {len(rows)} (length only: "
                  f"{sum(r[f'{lc}_rule_ece'] > 0.10 for r in rows if r['kind'] == 'length only')} of "
                  f"{sum(r['kind'] == 'length only' for r in rows)}, max "
                  f"{max(r[f'{lc}_rule_ece'] for r in rows if r['kind'] == 'length only'):.3f}); in-domain ECE "
                  + " ".join(f"{r[f'ece_{lc}']:.3f}" for r in target_rows if r.get("in_domain")))
        d = [r["on_rule_mcc"] - r["off_rule_mcc"] for r in rows]
        print(f"rule MCC with vs without the length calibration: worst {min(d):+.3f}, mean {np.mean(d):+.3f}")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
