"""Helpers that build small real bundles for service tests."""

from pathlib import Path

import numpy as np

from conftest import write_fasta


def toy_fasta(path: Path, n: int = 200, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        label = "gc" if i % 2 else "at"
        alphabet = list("GGCCAT") if label == "gc" else list("AATTGC")
        recs.append((f"s{i} label={label} split={'test' if i % 5 == 0 else 'train'}", "".join(rng.choice(alphabet, size=60))))
    return write_fasta(path, recs)


def make_bundle(work: Path, root: Path, k: int = 10, seed: int = 0, publish_it: bool = True) -> str:
    from genoray.bundle import publish, write_bundle
    from genoray.config import HeadConfig
    from genoray.embed import embed_sequences
    from genoray.encoders.kmer import KmerEncoder
    from genoray.index import build_index
    from genoray.train import train_head

    work.mkdir(parents=True, exist_ok=True)
    fa = toy_fasta(work / "toy.fa", seed=seed)
    embed_sequences(fa, work / "store", KmerEncoder(), use_ray=False)
    build_index(work / "store", work / "index")
    train_head(work / "store", work / "index", work / "head", HeadConfig(k=k, C=1.0))
    version = write_bundle(root, work / "index", work / "head", metrics={"seed": seed})
    if publish_it:
        publish(root, version)
    return version
