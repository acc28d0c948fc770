"""Frozen Hugging Face DNA language models as encoders (DNABERT-2, Nucleotide Transformer,
HyenaDNA, Caduceus, or any ``AutoModel`` checkpoint).

* Loads by hub id or local directory with ``AutoTokenizer``/``AutoModel``; weights are read
  only from safetensors (``use_safetensors=True``): a pickle checkpoint (``pytorch_model.bin``)
  is refused rather than unpickled; convert it once, in an isolated job, to safetensors. ``trust_remote_code`` is only passed when the
  user asked for it *and* the model is a local directory or was named explicitly by the user
  (the config field is ``False`` unless set).
* Pooling: masked mean over real tokens (default; attention mask, or ``input_ids != pad`` for
  tokenizers such as HyenaDNA's that return no mask) or the first (CLS) token.
* Sequences longer than the tile length are tiled with overlap; tile embeddings are averaged
  weighted by tile length. Optional reverse-complement averaging.
* Batches are formed by length bucket (sorted by length) to minimise padding; the output
  order equals the input order.
* float16/bfloat16 on GPU, float32 on CPU; the device is checked and falls back to CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from genoray.config import HFConfig, from_dict, to_dict
from genoray.dna import reverse_complement, tile

log = logging.getLogger(__name__)

VERSION = 1


def masked_mean(hidden, mask):
    """Mean of ``hidden[b, t, :]`` over tokens with ``mask[b, t] == 1`` (torch tensors)."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


def resolve_device(requested: str = "auto") -> str:
    """``"cuda"`` when asked for (or ``"auto"``) and available, else ``"cpu"`` (logged when a
    requested GPU is missing)."""
    import torch

    if requested == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        log.info("device auto: %s", device)
        return device
    if requested.startswith("cuda") and not torch.cuda.is_available():
        log.warning("device %r requested but CUDA is not available: falling back to CPU", requested)
        return "cpu"
    return requested


def _is_local(model: str) -> bool:
    return Path(model).expanduser().is_dir()


class HFEncoder:
    """Embeds sequences with a frozen transformers model; see the module docstring."""

    def __init__(self, config: HFConfig):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.config = config
        local = _is_local(config.model)
        if config.trust_remote_code and not local and "/" not in config.model:
            raise ValueError(
                f"trust_remote_code requested for {config.model!r}: only allowed for a local "
                "directory or an explicit 'org/name' hub id"
            )
        self.device = resolve_device(config.device)
        dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(config.dtype)
        if dtype is None:  # auto
            if self.device.startswith("cuda"):
                dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            else:
                dtype = torch.float32
        if not self.device.startswith("cuda") and dtype != torch.float32:
            dtype = torch.float32  # half precision matmuls on CPU are slow or unsupported
        kwargs: dict[str, Any] = {
            "trust_remote_code": bool(config.trust_remote_code),
            "local_files_only": config.local_files_only or local,
        }
        if config.revision and not local:
            kwargs["revision"] = config.revision
        path = str(Path(config.model).expanduser()) if local else config.model
        self.tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        # safetensors only: a pytorch_model.bin is a pickle, and genoray never loads pickles
        self.model = AutoModel.from_pretrained(path, dtype=dtype, use_safetensors=True, **kwargs)
        self.model.eval().to(self.device)
        self.dtype = dtype
        self.dim = int(getattr(self.model.config, "hidden_size", 0) or getattr(self.model.config, "d_model", 0))
        if not self.dim:
            raise ValueError(f"{config.model}: cannot find hidden_size/d_model in the model config")
        self.tile_nt = config.tile_nt or self._context_nt()
        if config.overlap_nt >= self.tile_nt:
            raise ValueError(f"overlap_nt {config.overlap_nt} >= tile length {self.tile_nt}")
        self._weights_sha = _weights_digest(path) if local else None

    def _context_nt(self) -> int:
        limits = [getattr(self.model.config, "max_position_embeddings", None),
                  getattr(self.tokenizer, "model_max_length", None)]
        usable = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
        # one token per base is the conservative assumption (k-mer/BPE tokenizers need fewer)
        return max(16, min(usable) - 2) if usable else 512

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "HFEncoder":
        """Rebuild from :meth:`spec` (the weights are verified against the recorded sha256)."""
        if spec.get("type") != "hf" or spec.get("version") != VERSION:
            raise ValueError(f"not a supported hf encoder spec: {spec.get('type')!r} v{spec.get('version')}")
        enc = cls(from_dict(HFConfig, spec["config"]))
        expected = spec.get("weights_sha256")
        if expected and enc._weights_sha != expected:
            from genoray.artifacts import ChecksumError

            # embeddings from other weights would be searched against this index silently
            raise ChecksumError(f"{enc.config.model}: model weights changed since this index/store was built "
                                f"(sha256 {str(enc._weights_sha)[:16]}... != {expected[:16]}...)")
        return enc

    def spec(self) -> dict[str, Any]:
        """Model, revision, weight checksums and pooling settings as JSON."""
        cfg = to_dict(self.config)
        cfg.pop("device")  # where it runs does not change what it computes
        cfg.pop("batch_size")
        return {"type": "hf", "version": VERSION, "config": cfg, "weights_sha256": self._weights_sha}

    @property
    def fingerprint(self) -> str:
        """Stable id of this encoder (see :func:`genoray.encoders.fingerprint`)."""
        from genoray.encoders import fingerprint

        return fingerprint(self)

    def _forward(self, chunks: list[str]) -> np.ndarray:
        import torch

        enc = self.tokenizer(chunks, padding=True, return_tensors="pt")
        ids = enc["input_ids"].to(self.device)
        if "attention_mask" in enc:
            mask = enc["attention_mask"].to(self.device)
        else:  # e.g. HyenaDNA: no mask, left padding
            pad = self.tokenizer.pad_token_id
            mask = (ids != pad).long() if pad is not None else torch.ones_like(ids)
        kwargs = {"input_ids": ids}
        if "attention_mask" in enc:
            kwargs["attention_mask"] = mask
        with torch.inference_mode():
            out = self.model(**kwargs, output_hidden_states=self.config.layer != -1)
            hidden = out.hidden_states[self.config.layer] if self.config.layer != -1 else out[0]
            if self.config.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                pooled = masked_mean(hidden, mask)
        return pooled.float().cpu().numpy()

    def _embed_strand(self, sequences: Sequence[str]) -> np.ndarray:
        tiles: list[str] = []
        owner: list[int] = []
        for i, s in enumerate(sequences):
            for t in tile(s, self.tile_nt, self.config.overlap_nt):
                tiles.append(t)
                owner.append(i)
        order = np.argsort([len(t) for t in tiles], kind="stable")  # length buckets
        vecs = np.zeros((len(tiles), self.dim), dtype=np.float32)
        bs = max(1, self.config.batch_size)
        for start in range(0, len(order), bs):
            sel = order[start : start + bs]
            vecs[sel] = self._forward([tiles[j] for j in sel])
        weights = np.array([len(t) for t in tiles], dtype=np.float64)
        owner_arr = np.array(owner)
        out = np.zeros((len(sequences), self.dim), dtype=np.float64)
        np.add.at(out, owner_arr, vecs * weights[:, None])
        totals = np.bincount(owner_arr, weights=weights, minlength=len(sequences))
        return (out / np.maximum(totals, 1e-9)[:, None]).astype(np.float32)

    def embed(self, sequences: Sequence[str]) -> np.ndarray:
        """Embed cleaned sequences into ``float32[len(sequences), dim]``."""
        if len(sequences) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if any(not s for s in sequences):
            raise ValueError("HFEncoder cannot embed an empty sequence")
        vecs = self._embed_strand(sequences)
        if self.config.reverse_complement:
            vecs = (vecs + self._embed_strand([reverse_complement(s) for s in sequences])) / 2
        return vecs


def _weights_digest(path: str) -> str | None:
    """sha256 over the safetensors/bin weight files of a local checkpoint (for the fingerprint)."""
    from genoray.artifacts import sha256_file

    files = sorted(p for p in Path(path).iterdir() if p.suffix in (".safetensors", ".bin"))
    if not files:
        return None
    import hashlib

    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()

