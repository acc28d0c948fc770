"""Encoders turn cleaned DNA sequences into fixed-size float32 vectors.

Every encoder implements :class:`Encoder` (:mod:`.base`): ``embed(sequences) -> float32[n, dim]``,
a JSON ``spec()`` from which :func:`encoder_from_spec` rebuilds an identical encoder, and a
``fingerprint`` (sha256 of the spec, which includes name, version and every parameter) that
keys stored embeddings so vectors from different encoders are never mixed.

Modules: :mod:`.kmer` (the weightless default: k-mer spectra, GC, z-curve, positions),
:mod:`.hf` (a frozen transformers model), :mod:`.fusion` (a model's vector joined with the
k-mer blocks), :mod:`.weights` (a pickle checkpoint converted to safetensors, safely).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from genoray.config import HFConfig, KmerConfig, PositionConfig
from genoray.encoders.base import Encoder, fingerprint
from genoray.encoders.fusion import FusionEncoder
from genoray.encoders.hf import HFEncoder
from genoray.encoders.kmer import KmerEncoder

__all__ = ["Encoder", "FusionEncoder", "HFEncoder", "KmerEncoder", "encoder_from_name", "encoder_from_spec",
           "fingerprint", "runs_remote_code"]
log = logging.getLogger(__name__)


def encoder_from_name(name: str, trust_remote_code: bool = False, batch_size: int | None = None, *,
                      kmer: KmerConfig | None = None, position: PositionConfig | None = None,
                      hf: HFConfig | None = None) -> Encoder:
    """Encoder from a CLI name: ``kmer``, ``kmer-pos`` (position-aware), ``hf:<hub id or dir>``,
    or ``hf:<model>+kmer`` / ``hf:<model>+kmer-pos`` (:class:`~genoray.encoders.fusion.FusionEncoder`).

    ``batch_size`` sets a transformers encoder's forward-pass batch (default: ``hf``'s, or
    :class:`~genoray.config.HFConfig`'s). ``kmer`` / ``position`` and ``hf`` (its ``model`` is
    replaced by the name's) override the defaults of the named encoder.
    """
    if name in ("kmer", "kmer-pos"):
        pos = (position or PositionConfig()) if name == "kmer-pos" else None
        return KmerEncoder(dataclasses.replace(kmer or KmerConfig(), position=pos))
    base, plus, suffix = name.rpartition("+")
    if plus and base.startswith("hf:") and suffix in ("kmer", "kmer-pos"):  # feature fusion
        return FusionEncoder(encoder_from_name(base, trust_remote_code, batch_size, hf=hf),
                             encoder_from_name(suffix, kmer=kmer, position=position))
    if name.startswith("hf:"):
        cfg = HFConfig(model=name[3:], trust_remote_code=trust_remote_code) if hf is None else \
            dataclasses.replace(hf, model=name[3:], trust_remote_code=trust_remote_code or hf.trust_remote_code)
        if batch_size:
            cfg = dataclasses.replace(cfg, batch_size=batch_size)
        return HFEncoder(cfg)
    raise ValueError(f"unknown encoder {name!r}: use 'kmer', 'kmer-pos', 'hf:<model id or directory>' or "
                     "'hf:<model>+kmer' / 'hf:<model>+kmer-pos' (fusion)")


def encoder_from_spec(spec: dict[str, Any], trust_remote_code: bool = False) -> Encoder:
    """Rebuild an encoder from ``spec()`` output (as stored beside embeddings and indexes).
    ``trust_remote_code`` is the calling command's decision (``--trust-remote-code``); a value
    recorded in the spec never enables a model's own code."""
    kind = spec.get("type")
    if kind == "kmer":
        return KmerEncoder.from_spec(spec)
    if kind == "hf":
        return HFEncoder.from_spec(spec, trust_remote_code=trust_remote_code)
    if kind == "fusion":
        return FusionEncoder.from_spec(spec, encoder_from_spec(spec["model"], trust_remote_code),
                                       encoder_from_spec(spec["kmer"]))
    raise ValueError(f"unknown encoder type {kind!r} in spec; expected 'kmer', 'hf' or 'fusion'")


def runs_remote_code(encoder: Encoder) -> bool:
    """Whether ``encoder`` (or the model inside a fusion) was loaded with the command's
    ``trust_remote_code``: what the command passes on to its workers, which rebuild it from its spec."""
    inner = getattr(encoder, "model", None) if isinstance(encoder, FusionEncoder) else encoder
    return bool(getattr(inner, "remote_code", False))
