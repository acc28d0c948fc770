"""Feature fusion: a model's pooled embedding concatenated with the k-mer feature blocks.

``hf:DIR+kmer`` / ``hf:DIR+kmer-pos`` build a :class:`FusionEncoder`: the vector of a frozen
transformers model (:class:`~genoray.encoders.hf.HFEncoder`) followed by the blocks of a
:class:`~genoray.encoders.kmer.KmerEncoder`: one block per k-mer spectrum, one composition
block (GC content + z-curve) and, for ``kmer-pos``, the positional block.

Blocks differ in width (128 model dims vs 4 GC/z-curve-ish dims vs thousands of positional
dims) and in spread, so concatenating them raw lets one dominate every distance. ``fit``
measures, on a sample of the fit corpus (at most ``FIT_SAMPLE`` sequences), each block's mean
and its RMS distance to that mean; ``embed`` centres each block, divides it by that RMS and
weights it ``1 / sqrt(n_blocks)``. Every block then contributes the same expected share of
the squared distance between two sequences (and of the vector's squared norm, about 1).
The fitted means and scales are part of ``spec()``, so the fingerprint covers the model (its
spec pins the weights' sha256), the k-mer configuration and the normalisation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from genoray.encoders.base import fingerprint

VERSION = 1
FIT_SAMPLE = 2000


def _kmer_blocks(kmer) -> list[tuple[str, int, int]]:
    """(name, start, stop) of each block in a KmerEncoder's vector, in its order."""
    cfg = kmer.config
    blocks, at = [], 0
    for k in cfg.ks:
        width = len(kmer._canon[k][1]) if cfg.canonical else 4**k
        blocks.append((f"{k}-mer", at, at + width))
        at += width
    comp = int(cfg.gc) + 9 * int(cfg.zcurve)
    if comp:
        blocks.append(("gc+zcurve", at, at + comp))
        at += comp
    if cfg.position is not None:
        blocks.append(("position", at, kmer.dim))
    return blocks


class FusionEncoder:
    """Concatenation of an ``HFEncoder`` and a ``KmerEncoder``, block-normalised (see module)."""

    def __init__(self, model, kmer, norms: list[dict[str, Any]] | None = None):
        self.model, self.kmer = model, kmer
        self.norms = norms

    @property
    def needs_fit(self) -> bool:
        """Whether :meth:`fit` must run first (block normalisation or the k-mer encoder unfitted)."""
        return self.norms is None or bool(getattr(self.kmer, "needs_fit", False))

    def blocks(self) -> list[tuple[str, int, int]]:
        """(name, start, stop) of every block of the fused vector."""
        d = self.model.dim
        return [("model", 0, d)] + [(n, d + a, d + b) for n, a, b in _kmer_blocks(self.kmer)]

    @property
    def dim(self) -> int:
        """The model's dimension plus the k-mer encoder's."""
        return self.model.dim + self.kmer.dim

    def _raw(self, sequences: Sequence[str]) -> np.ndarray:
        return np.hstack([self.model.embed(sequences), self.kmer.embed(sequences)]).astype(np.float64)

    def fit(self, sequences: Sequence[str]) -> FusionEncoder:
        """Fit the k-mer encoder (if it needs it) and each block's mean and RMS radius on an
        evenly spaced sample of at most ``FIT_SAMPLE`` sequences."""
        if getattr(self.kmer, "needs_fit", False):
            self.kmer.fit(sequences)
        seqs = list(sequences)
        if not seqs:
            raise ValueError("FusionEncoder.fit needs at least one sequence")
        step = max(1, math.ceil(len(seqs) / FIT_SAMPLE))
        raw = self._raw(seqs[::step])
        norms: list[dict[str, Any]] = []
        for name, a, b in self.blocks():
            mean = raw[:, a:b].mean(0)
            rms = float(np.sqrt(((raw[:, a:b] - mean) ** 2).sum(1).mean()))
            norms.append({"block": name, "mean": [float(v) for v in mean.astype(np.float32)],
                          "scale": rms if rms > 1e-12 else 1.0})
        self.norms = norms
        self.fit_info_ = {"fit_sequences": len(raw), "blocks": {n["block"]: round(n["scale"], 6) for n in norms},
                          "kmer": getattr(self.kmer, "fit_info_", None)}
        return self

    def embed(self, sequences: Sequence[str]) -> np.ndarray:
        """``float32[len(sequences), dim]``: each block centred, scaled to unit RMS radius and
        weighted ``1/sqrt(n_blocks)``."""
        if self.needs_fit:
            raise ValueError("FusionEncoder is not fitted: call fit(sequences) first")
        if len(sequences) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        raw = self._raw(sequences)
        assert self.norms is not None
        w = 1.0 / math.sqrt(len(self.norms))
        for norm, (_, a, b) in zip(self.norms, self.blocks()):
            raw[:, a:b] = (raw[:, a:b] - np.asarray(norm["mean"])) * (w / norm["scale"])
        return raw.astype(np.float32)

    def spec(self) -> dict[str, Any]:
        """JSON spec: the model and k-mer specs and the fitted block normalisation."""
        return {"type": "fusion", "version": VERSION, "model": self.model.spec(), "kmer": self.kmer.spec(),
                "norms": self.norms}

    @classmethod
    def from_spec(cls, spec: dict[str, Any], model, kmer) -> FusionEncoder:
        """Rebuild from :meth:`spec` with its parts already rebuilt from ``spec["model"]`` and
        ``spec["kmer"]`` (:func:`genoray.encoders.encoder_from_spec` does; the model's own spec
        verifies its weights)."""
        if spec.get("type") != "fusion" or spec.get("version") != VERSION:
            raise ValueError(f"not a supported fusion encoder spec: {spec.get('type')!r} v{spec.get('version')}")
        enc = cls(model, kmer, spec.get("norms"))
        if enc.norms is not None and [n["block"] for n in enc.norms] != [b[0] for b in enc.blocks()]:
            raise ValueError("fusion spec: fitted blocks do not match the encoders' blocks")
        return enc

    @property
    def fingerprint(self) -> str:
        """Stable id of this encoder (see :func:`genoray.encoders.base.fingerprint`)."""

        return fingerprint(self)
