import itertools
from collections import Counter

import numpy as np
import pytest

from genoray.config import KmerConfig, PositionConfig
from genoray.encoders import encoder_from_spec, fingerprint
from genoray.encoders.kmer import KmerEncoder, encode_batch, gc_zcurve, spectrum

ALPHA = "ACGT"


def oracle_counts(seq: str, k: int) -> np.ndarray:
    kmers = ["".join(p) for p in itertools.product(ALPHA, repeat=k)]
    c = Counter(seq[i : i + k] for i in range(len(seq) - k + 1))
    return np.array([c[m] for m in kmers], dtype=float)


def test_spectrum_matches_hand_counts_and_skips_n_and_boundaries():
    seqs = ["ACGTAC", "AANAA", "GG", "T"]
    codes, lengths = encode_batch(seqs)
    for k in (1, 2, 3):
        got = spectrum(codes, lengths, k)
        for i, s in enumerate(seqs):
            assert np.array_equal(got[i], oracle_counts(s, k)), (s, k)  # 'N' k-mers absent from oracle too
    # hand-checked: AANAA has two 2-mers AA and no k-mer crosses into the next sequence
    two = spectrum(codes, lengths, 2)
    assert two[1].sum() == 2 and two[1][0] == 2
    assert two[2].sum() == 1 and two[3].sum() == 0


def test_spectrum_equals_countvectorizer():
    from sklearn.feature_extraction.text import CountVectorizer

    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list(ALPHA), size=rng.integers(5, 50))) for _ in range(50)]
    codes, lengths = encode_batch(seqs)
    got = spectrum(codes, lengths, 3)
    cv = CountVectorizer(analyzer="char", ngram_range=(3, 3), lowercase=False)
    ref = cv.fit_transform(seqs).toarray()
    kmers = ["".join(p) for p in itertools.product(ALPHA, repeat=3)]
    cols = {m: i for i, m in enumerate(kmers)}
    for name, j in cv.vocabulary_.items():
        assert np.array_equal(got[:, cols[name]], ref[:, j])


def test_gc_and_zcurve_hand_values():
    # "AACGT": phases 0:{A(0),G(3)}, 1:{A(1),T(4)}, 2:{C(2)}
    gc, z = gc_zcurve(*encode_batch(["AACGT"]))
    assert gc[0, 0] == pytest.approx(2 / 5)
    # phase 0: A+G=2,C+T=0 -> x=1; A+C=1,G+T=1 -> y=0; A+T=1,G+C=1 -> z=0
    # phase 1: A,T -> x=(1-1)/2=0, y=(1-1)/2=0, z=(2-0)/2=1
    # phase 2: C -> x=-1, y=1, z=-1
    assert np.allclose(z[0], [1, 0, 0, 0, 0, 1, -1, 1, -1])
    gc, _ = gc_zcurve(*encode_batch(["NNNN"]))
    assert gc[0, 0] == 0.0


def test_embed_layout_and_block_norms():
    enc = KmerEncoder(KmerConfig(ks=(1, 2)))
    x = enc.embed(["ACGT", "AAAA"])
    assert x.dtype == np.float32 and x.shape == (2, enc.dim) == (2, 4 + 16 + 1 + 9)
    assert np.allclose(x[0, :4], 0.5) and np.allclose(x[1, :4], [1, 0, 0, 0])
    assert np.linalg.norm(x[0, 4:20]) == pytest.approx(1.0)
    assert x[0, 20] == pytest.approx(0.5)  # GC of ACGT


def test_canonical_merges_reverse_complements():
    enc = KmerEncoder(KmerConfig(ks=(2,), canonical=True, gc=False, zcurve=False))
    assert enc.dim == 10
    a, b = enc.embed(["AACCGGTTAC", "GTAACCGGTT"])  # second is the reverse complement of the first
    assert np.allclose(a, b)


def test_position_block_is_one_hot_for_k1_bin1():
    enc = KmerEncoder(KmerConfig(ks=(1,), gc=False, zcurve=False,
                                 position=PositionConfig(window=4, ks=(1,), bin_size=1, weight=1.0, enable="always")))
    x = enc.embed(["ACGT", "ACNT"])
    pos = x[:, 4:]
    expected0 = np.eye(4)[[0, 1, 2, 3]].reshape(-1) / 2.0  # one-hot, unit-normalised (norm sqrt(4))
    assert np.allclose(pos[0], expected0)
    expected1 = np.zeros(16)
    expected1[[0, 5, 15]] = 1 / np.sqrt(3)  # N position contributes nothing
    assert np.allclose(pos[1], expected1)


def test_position_bins_and_k2():
    enc = KmerEncoder(KmerConfig(ks=(1,), gc=False, zcurve=False,
                                 position=PositionConfig(window=4, ks=(2,), bin_size=2, weight=1.0, enable="always")))
    pos = enc.embed(["AACC"])[0, 4:]
    # 2-mers AA(0) at pos0, AC(1) at pos1 -> bin 0; CC(5) at pos2 -> bin 1 (index 16+5)
    expected = np.zeros(32)
    expected[[0, 1, 21]] = 1 / np.sqrt(3)
    assert np.allclose(pos, expected)


def test_crop_pad_policy_and_error_policy():
    enc = KmerEncoder(KmerConfig(ks=(1,), gc=False, zcurve=False,
                                 position=PositionConfig(window=4, ks=(1,), bin_size=1, weight=1.0, enable="always")))
    long, short = enc.embed(["TTACGTTT", "CG"])[:, 4:]  # centre crop -> ACGT? (8-4)//2=2 -> "ACGT"
    assert np.allclose(long, enc.embed(["ACGT"])[0, 4:])
    assert np.allclose(short, enc.embed(["NCGN"])[0, 4:])  # centre pad with N
    strict = KmerEncoder(KmerConfig(position=PositionConfig(window=4, bin_size=1, length_policy="error", enable="always")))
    with pytest.raises(ValueError, match="fitted on 4-bp windows"):
        strict.embed(["ACGTA"])


def test_fit_resolves_window_and_spec_round_trip():
    enc = KmerEncoder(KmerConfig(position=PositionConfig(enable="always")))
    with pytest.raises(ValueError, match="not fitted"):
        enc.embed(["ACGT"])
    enc.fit(["ACGTAC"] * 3 + ["ACG"])
    assert enc.config.position.window == 6 and enc.config.position.bin_size == 1
    again = encoder_from_spec(enc.spec())
    seqs = ["ACGTAC", "TTTTGGA", "AC"]
    assert np.array_equal(again.embed(seqs), enc.embed(seqs))
    assert fingerprint(again) == fingerprint(enc) != fingerprint(KmerEncoder())


def test_spec_rejects_unknown():
    with pytest.raises(ValueError, match="unknown encoder type"):
        encoder_from_spec({"type": "nope"})
    with pytest.raises(ValueError, match="unknown keys"):
        encoder_from_spec({"type": "kmer", "version": 1, "config": {"bogus": 1}})


def _corpus(n, length, motif=None, seed=0):
    rng = np.random.default_rng(seed)
    seqs = ["".join(rng.choice(list(ALPHA), size=length)) for _ in range(n)]
    if motif:
        mid = (length - len(motif)) // 2
        seqs = [s[:mid] + motif + s[mid + len(motif):] for s in seqs]
    return seqs


def test_auto_keeps_position_block_only_for_aligned_windows():
    aligned = KmerEncoder(KmerConfig(position=PositionConfig())).fit(_corpus(500, 40, motif="TATAAA"))
    assert aligned.config.position is not None and aligned.fit_info_["position_block"]
    assert aligned.fit_info_["position_signal_bits"] > 1.0  # a fixed base: log2(1/0.25)-ish
    unaligned = KmerEncoder(KmerConfig(position=PositionConfig())).fit(_corpus(500, 40))
    assert unaligned.config.position is None and not unaligned.fit_info_["position_block"]
    assert fingerprint(unaligned) == fingerprint(KmerEncoder())  # identical vectors, identical key
