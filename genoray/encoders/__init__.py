"""Encoders turn cleaned DNA sequences into fixed-size float32 vectors.

Every encoder implements :class:`Encoder`: ``embed(sequences) -> float32[n, dim]``, a JSON
``spec()`` from which :func:`encoder_from_spec` rebuilds an identical encoder, and a
``fingerprint`` (sha256 of the spec, which includes name, version and every parameter) that
keys stored embeddings so vectors from different encoders are never mixed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from genoray.artifacts import sha256_json


@runtime_checkable
class Encoder(Protocol):
    dim: int

    def embed(self, sequences: Sequence[str]) -> np.ndarray: ...

    def spec(self) -> dict[str, Any]: ...


def fingerprint(encoder: Encoder) -> str:
    """Stable id of an encoder: sha256 of its canonical JSON spec (first 16 hex digits)."""
    return sha256_json(encoder.spec())[:16]


def encoder_from_name(name: str, trust_remote_code: bool = False, batch_size: int | None = None) -> Encoder:
    """Encoder from a CLI name: ``kmer``, ``kmer-pos`` (position-aware), ``hf:<hub id or dir>``,
    or ``hf:<model>+kmer`` / ``hf:<model>+kmer-pos`` (:class:`~genoray.encoders.fusion.FusionEncoder`).
    ``batch_size`` sets a transformers encoder's forward-pass batch (default 32)."""
    from genoray.config import KmerConfig, PositionConfig

    if name == "kmer":
        from genoray.encoders.kmer import KmerEncoder

        return KmerEncoder(KmerConfig())
    if name == "kmer-pos":
        from genoray.encoders.kmer import KmerEncoder

        return KmerEncoder(KmerConfig(position=PositionConfig()))
    base, plus, suffix = name.rpartition("+")
    if plus and base.startswith("hf:") and suffix in ("kmer", "kmer-pos"):  # feature fusion
        from genoray.encoders.fusion import FusionEncoder

        return FusionEncoder(encoder_from_name(base, trust_remote_code, batch_size), encoder_from_name(suffix))
    if name.startswith("hf:"):
        from genoray.config import HFConfig
        from genoray.encoders.hf import HFEncoder

        extra = {"batch_size": batch_size} if batch_size else {}
        return HFEncoder(HFConfig(model=name[3:], trust_remote_code=trust_remote_code, **extra))
    raise ValueError(f"unknown encoder {name!r}: use 'kmer', 'kmer-pos', 'hf:<model id or directory>' or "
                     "'hf:<model>+kmer' / 'hf:<model>+kmer-pos' (fusion)")


def encoder_from_spec(spec: dict[str, Any]) -> Encoder:
    """Rebuild an encoder from ``spec()`` output (as stored beside embeddings and indexes)."""
    kind = spec.get("type")
    if kind == "kmer":
        from genoray.encoders.kmer import KmerEncoder

        return KmerEncoder.from_spec(spec)
    if kind == "hf":
        from genoray.encoders.hf import HFEncoder

        return HFEncoder.from_spec(spec)
    if kind == "fusion":
        from genoray.encoders.fusion import FusionEncoder

        return FusionEncoder.from_spec(spec)
    raise ValueError(f"unknown encoder type {kind!r} in spec; expected 'kmer', 'hf' or 'fusion'")
