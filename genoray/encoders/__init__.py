"""Encoders turn cleaned DNA sequences into fixed-size float32 vectors.

Every encoder implements :class:`Encoder`: ``embed(sequences) -> float32[n, dim]``, a JSON
``spec()`` from which :func:`encoder_from_spec` rebuilds an identical encoder, and a
``fingerprint`` (sha256 of the spec, which includes name, version and every parameter) that
keys stored embeddings so vectors from different encoders are never mixed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from genoray.artifacts import sha256_json

log = logging.getLogger(__name__)


@runtime_checkable
class Encoder(Protocol):
    """What the pipeline needs of an encoder: its vector size, ``embed`` and a JSON ``spec``."""

    @property
    def dim(self) -> int:
        """Length of each embedding vector."""
        ...

    def embed(self, sequences: Sequence[str]) -> np.ndarray:
        """Embed cleaned sequences into a float32 ``(n, dim)`` matrix."""
        ...

    def spec(self) -> dict[str, Any]:
        """JSON-serialisable spec that :func:`encoder_from_spec` rebuilds the encoder from."""
        ...


def fingerprint(encoder: Encoder) -> str:
    """Stable id of an encoder: sha256 of its canonical JSON spec (first 16 hex digits)."""
    return sha256_json(encoder.spec())[:16]


def encoder_from_name(name: str, trust_remote_code: bool = False, *, kmer=None, position=None, hf=None) -> Encoder:
    """Encoder from a CLI name: ``kmer``, ``kmer-pos`` (position-aware) or ``hf:<hub id or dir>``.

    ``kmer`` / ``position`` (:class:`~genoray.config.KmerConfig` / ``PositionConfig``) and ``hf``
    (:class:`~genoray.config.HFConfig`; its ``model`` is replaced by the name's) override the
    defaults of the named encoder.
    """
    import dataclasses

    from genoray.config import KmerConfig, PositionConfig

    if name in ("kmer", "kmer-pos"):
        from genoray.encoders.kmer import KmerEncoder

        pos = (position or PositionConfig()) if name == "kmer-pos" else None
        return KmerEncoder(dataclasses.replace(kmer or KmerConfig(), position=pos))
    if name.startswith("hf:"):
        from genoray.config import HFConfig
        from genoray.encoders.hf import HFEncoder

        cfg = HFConfig(model=name[3:], trust_remote_code=trust_remote_code) if hf is None else \
            dataclasses.replace(hf, model=name[3:], trust_remote_code=trust_remote_code or hf.trust_remote_code)
        return HFEncoder(cfg)
    raise ValueError(f"unknown encoder {name!r}: use 'kmer', 'kmer-pos' or 'hf:<model id or directory>'")


def encoder_from_artifact(path) -> Encoder:
    """The (fitted) encoder that made an artifact: an embedding store, an index directory, a
    bundle root (its ``CURRENT`` version) or one bundle version directory. Embedding new data
    with it makes stores comparable (same fingerprint) even for encoders fitted on their data."""
    from pathlib import Path

    path = Path(path)
    if (path / "store.json").is_file():
        from genoray.store import EmbeddingStore

        return encoder_from_spec(EmbeddingStore(path, verify=False).encoder_spec)
    if (path / "encoder.json").is_file():  # a store whose first run was interrupted
        from genoray.artifacts import read_json

        return encoder_from_spec(read_json(path / "encoder.json")["fitted"])
    if (path / "CURRENT").is_file() or (path / "bundle.json").is_file():
        from genoray.bundle import current_version, verify_bundle

        root, version = (path, current_version(path)) if (path / "CURRENT").is_file() else (path.parent.parent, path.name)
        if version is None:
            raise ValueError(f"{path}: bundle root has no CURRENT version")
        return encoder_from_spec(verify_bundle(root, version)["encoder"])
    from genoray.index import MANIFEST

    if (path / MANIFEST).is_file():
        from genoray.artifacts import read_json

        return encoder_from_spec(read_json(path / MANIFEST)["encoder"])
    raise FileNotFoundError(f"{path}: not an embedding store, index or bundle (no store.json, {MANIFEST}, CURRENT "
                            "or bundle.json)")


def encoder_from_spec(spec: dict[str, Any]) -> Encoder:
    """Rebuild an encoder from ``spec()`` output (as stored beside embeddings and indexes)."""
    kind = spec.get("type")
    if kind == "kmer":
        from genoray.encoders.kmer import KmerEncoder

        return KmerEncoder.from_spec(spec)
    if kind == "hf":
        from genoray.encoders.hf import HFEncoder

        return HFEncoder.from_spec(spec)
    raise ValueError(f"unknown encoder type {kind!r} in spec; expected 'kmer' or 'hf'")
