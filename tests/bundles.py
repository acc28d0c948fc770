"""Helpers that build small real bundles for service tests."""

from pathlib import Path

from conftest import toy_fasta


def make_bundle(work: Path, root: Path, k: int = 10, seed: int = 0, publish_it: bool = True) -> str:
    from genoray.bundle import publish
    from genoray.config import HeadConfig
    from genoray.embedding.job import embed_sequences
    from genoray.encoders.kmer import KmerEncoder
    from genoray.index import build_index
    from genoray.pipeline import write_bundle
    from genoray.pipeline.train import train_head

    work.mkdir(parents=True, exist_ok=True)
    fa = toy_fasta(work / "toy.fa", seed=seed)
    embed_sequences(fa, work / "store", KmerEncoder(), use_ray=False)
    build_index(work / "store", work / "index")
    train_head(work / "store", work / "index", work / "head", HeadConfig(k=k, C=1.0))
    version = write_bundle(root, work / "index", work / "head", metrics={"seed": seed})
    if publish_it:
        publish(root, version)
    return version
