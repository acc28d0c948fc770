"""Frozen Hugging Face DNA language models as encoders (DNABERT-2, Nucleotide Transformer,
HyenaDNA, Caduceus, or any ``AutoModel`` checkpoint).

* Loads by hub id or local directory with ``AutoTokenizer``/``AutoModel``; weights are read
  only from safetensors (``use_safetensors=True``): a pickle checkpoint (``pytorch_model.bin``)
  is refused rather than unpickled; convert it once, in an isolated job, to safetensors.
* Running a model's own Python code (``trust_remote_code``) is a decision of the person running
  the command, never of an artifact: :meth:`HFEncoder.from_spec` (a store, index, head or
  bundle) ignores the value the spec recorded and takes the caller's (``--trust-remote-code``
  on that command); a model that needs its own code is otherwise refused
  (:class:`RemoteCodeRefused`) before any of it runs. When it is on, a warning names the model
  and its ``*.py`` files, and a hub id must be pinned to a ``revision``.
* Pooling: masked mean over real tokens (default; attention mask, or ``input_ids != pad`` for
  tokenizers such as HyenaDNA's that return no mask) or the first (CLS) token.
* Sequences longer than the tile length are tiled with overlap; tile embeddings are averaged
  weighted by tile length. Optional reverse-complement averaging.
* Batch invariance: a sequence's vector does not depend on the other sequences in its batch
  or on the batch size. genoray pads on the right itself, whatever the tokenizer's
  ``padding_side`` (HyenaDNA's pads on the left, and in a causal model left pads feed every
  later token), passes the mask to models that take one, and pools over real tokens only. A
  bidirectional model that takes no attention mask is batched only with tiles of equal token
  length (``padding_mode == "exact"``), so it never sees a pad.
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

from genoray.config import HFConfig, parse, to_dict
from genoray.encoders.base import fingerprint
from genoray.encoders.remote_code import (
    RemoteCodeRefused,
    check_remote_code_allowed,
    custom_code_map,
    remote_code_message,
)
from genoray.infra.artifacts import sha256_file
from genoray.infra.errors import ChecksumError
from genoray.sequences.clean import reverse_complement, tile

log = logging.getLogger(__name__)

VERSION = 2  # 2: genoray pads on the right itself (v1 used the tokenizer's side: left for HyenaDNA)


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

    def __init__(self, config: HFConfig, trust_remote_code: bool | None = None):
        """``trust_remote_code``: the command's decision to run the model's own code (``None``:
        ``config.trust_remote_code``, for a config the command itself built from its flags)."""
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.config = config
        local = _is_local(config.model)
        allow = bool(config.trust_remote_code if trust_remote_code is None else trust_remote_code)
        self.remote_code = allow
        if allow:
            check_remote_code_allowed(config.model, config.revision, local)
        elif custom_code_map(config.model, config.revision, local):  # refused before transformers reads it
            raise RemoteCodeRefused(remote_code_message(config.model))
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
            "trust_remote_code": allow,
            "local_files_only": config.local_files_only or local,
        }
        if config.revision and not local:
            kwargs["revision"] = config.revision
        path = str(Path(config.model).expanduser()) if local else config.model
        if not kwargs["local_files_only"]:
            kwargs["local_files_only"] = not _needs_hub(path, kwargs.get("revision"))
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
            # safetensors only: a pytorch_model.bin is a pickle, and genoray never loads pickles
            self.model = AutoModel.from_pretrained(path, dtype=dtype, use_safetensors=True, **kwargs)
        except OSError as e:
            where = "local directory" if local else "hub id (not in the local Hugging Face cache)"
            raise ModelUnavailableError(f"{config.model}: cannot load this {where}: {_first_line(e)}") from e
        except ValueError as e:  # transformers refuses a model with custom code unless trust_remote_code
            if allow or "trust_remote_code" not in str(e):
                raise
            raise RemoteCodeRefused(remote_code_message(config.model)) from None
        self.model.eval().to(self.device)
        self.dtype = dtype
        self.dim = int(getattr(self.model.config, "hidden_size", 0) or getattr(self.model.config, "d_model", 0))
        if not self.dim:
            raise ValueError(f"{config.model}: cannot find hidden_size/d_model in the model config")
        self.tile_nt = config.tile_nt or self._context_nt()
        if config.overlap_nt >= self.tile_nt:
            raise ValueError(f"overlap_nt {config.overlap_nt} >= tile length {self.tile_nt}")
        self._weights_sha = _weights_digest(path) if local else None
        self.padding_mode = self._padding_mode()
        self._version = VERSION
        self.tokenize_ahead = True  # tokenize batch i+1 on a thread during batch i (bench: off = old loop)

    def _context_nt(self) -> int:
        limits = [getattr(self.model.config, "max_position_embeddings", None),
                  getattr(self.tokenizer, "model_max_length", None)]
        usable = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
        # one token per base is the conservative assumption (k-mer/BPE tokenizers need fewer)
        return max(16, min(usable) - 2) if usable else 512

    @classmethod
    def from_spec(cls, spec: dict[str, Any], trust_remote_code: bool = False) -> "HFEncoder":
        """Rebuild from :meth:`spec` (the weights are verified against the recorded sha256).
        The spec's ``trust_remote_code`` is never used to enable anything (a spec comes from an
        artifact); ``trust_remote_code`` is the loading command's own decision."""
        if spec.get("type") != "hf" or spec.get("version") not in (1, VERSION):
            raise ValueError(f"not a supported hf encoder spec: {spec.get('type')!r} v{spec.get('version')}")
        # the recorded value stays in the config (it is part of the fingerprint) but enables nothing
        enc = cls(parse(HFConfig, spec["config"]), trust_remote_code=trust_remote_code)
        if spec["version"] == 1:
            # v1 let the tokenizer pad; only right padding with an attention mask computed what v2 does
            if getattr(enc.tokenizer, "padding_side", "right") != "right" or not enc._takes_mask:
                raise ValueError(f"{enc.config.model}: this store/index was embedded by hf encoder v1, whose "
                                 "vectors depended on the other sequences in a batch for this model (left "
                                 "padding); re-embed it")
            enc._version = 1
        expected = spec.get("weights_sha256")
        if expected and enc._weights_sha != expected:
            # embeddings from other weights would be searched against this index silently
            raise ChecksumError(f"{enc.config.model}: model weights changed since this index/store was built "
                                f"(sha256 {str(enc._weights_sha)[:16]}... != {expected[:16]}...)")
        return enc

    def spec(self) -> dict[str, Any]:
        """Model, revision, weight checksums and pooling settings as JSON."""
        cfg = to_dict(self.config)
        cfg.pop("device")  # where it runs does not change what it computes
        cfg.pop("batch_size")
        cfg.pop("tokens_per_batch", None)  # batching does not change the vectors
        return {"type": "hf", "version": self._version, "config": cfg, "weights_sha256": self._weights_sha}

    @property
    def fingerprint(self) -> str:
        """Stable id of this encoder (see :func:`genoray.encoders.base.fingerprint`)."""

        return fingerprint(self)

    def _padding_mode(self) -> str:
        """``"right"`` when padding cannot reach real tokens: the model takes an attention mask
        (bidirectional encoders) or is causal (pads after the last real token are never seen by
        it). ``"exact"`` otherwise (a bidirectional model that ignores padding): tiles are then
        batched only with tiles of the same token length, so no padding is ever added."""
        import inspect

        cfg = self.model.config
        params = inspect.signature(self.model.forward).parameters
        self._takes_mask = "attention_mask" in params
        returns_mask = "attention_mask" in self.tokenizer(["ACGT"])
        if self._takes_mask and returns_mask:
            return "right"
        archs = " ".join(getattr(cfg, "architectures", None) or [])
        auto_map = getattr(cfg, "auto_map", None) or {}
        causal = (bool(getattr(cfg, "is_decoder", False)) or "CausalLM" in archs
                  or "AutoModelForCausalLM" in auto_map
                  or getattr(cfg, "model_type", "") in ("hyenadna", "gpt2", "mamba", "llama", "mistral"))
        return "right" if causal else "exact"

    def _token_ids(self, chunks: list[str]) -> list[list[int]]:
        return list(self.tokenizer(chunks, padding=False, truncation=False)["input_ids"])

    def _forward(self, chunks: list[str]) -> np.ndarray:
        """Pooled vectors of ``chunks``, padded on the right by genoray itself (whatever the
        tokenizer's ``padding_side``: a left-padding tokenizer such as HyenaDNA's made every
        vector depend on the other sequences in its causal batch)."""
        return self._forward_ids(self._token_ids(chunks))

    def _forward_ids(self, ids: list[list[int]]) -> np.ndarray:
        if self.padding_mode == "exact":
            by_len: dict[int, list[int]] = {}
            for i, row in enumerate(ids):
                by_len.setdefault(len(row), []).append(i)
            out = np.zeros((len(ids), self.dim), dtype=np.float32)
            for rows in by_len.values():
                out[rows] = self._run([ids[i] for i in rows])
            return out
        return self._run(ids)

    def _run(self, ids: list[list[int]]) -> np.ndarray:
        import torch

        width = max(len(r) for r in ids)
        pad = self.tokenizer.pad_token_id
        batch = torch.full((len(ids), width), 0 if pad is None else pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, row in enumerate(ids):
            batch[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        if self.device.startswith("cuda"):
            batch, mask = batch.pin_memory(), mask.pin_memory()
        batch, mask = batch.to(self.device, non_blocking=True), mask.to(self.device, non_blocking=True)
        kwargs = {"input_ids": batch}
        if self._takes_mask:
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
        vecs = np.zeros((len(tiles), self.dim), dtype=np.float32)
        batches = plan_batches([len(t) for t in tiles], self.config.batch_size, self.config.tokens_per_batch)
        if len(batches) < 2 or not self.tokenize_ahead:
            for sel in batches:
                vecs[sel] = self._forward([tiles[j] for j in sel])
        else:  # tokenize the next batch on a thread while this one runs (torch releases the GIL)
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(1, thread_name_prefix="genoray-tokenize") as pool:
                ahead = pool.submit(self._token_ids, [tiles[j] for j in batches[0]])
                for i, sel in enumerate(batches):
                    ids = ahead.result()
                    if i + 1 < len(batches):
                        ahead = pool.submit(self._token_ids, [tiles[j] for j in batches[i + 1]])
                    vecs[sel] = self._forward_ids(ids)
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


def plan_batches(lengths: Sequence[int], batch_size: int, tokens_per_batch: int = 0) -> list[np.ndarray]:
    """Index batches over length-sorted items: ``batch_size`` items each, or with
    ``tokens_per_batch > 0`` as many as fit ``rows x longest <= tokens_per_batch`` (at least one)."""
    order = np.argsort(np.asarray(lengths), kind="stable")  # length buckets
    if tokens_per_batch <= 0:
        bs = max(1, batch_size)
        return [order[i : i + bs] for i in range(0, len(order), bs)]
    batches, start = [], 0
    srt = np.asarray(lengths)[order]
    while start < len(order):
        stop = start + 1
        while stop < len(order) and (stop + 1 - start) * srt[stop] <= tokens_per_batch:
            stop += 1
        batches.append(order[start:stop])
        start = stop
    return batches


def padding_waste(lengths: Sequence[int], batches: list[np.ndarray]) -> float:
    """Padded positions / real positions when each batch is padded to its longest item."""
    lens = np.asarray(lengths)
    real = lens.sum()
    padded = sum(len(b) * lens[b].max() for b in batches if len(b))
    return float(padded - real) / max(1, real)


class ModelUnavailableError(FileNotFoundError):
    """A model that is neither a usable local directory, nor cached, nor reachable on the hub."""


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:400]


HUB_PROBE_TIMEOUT_S = 3.0


def _needs_hub(model: str, revision: str | None) -> bool:
    """Whether loading ``model`` must contact the hub: ``False`` when its config is already in
    the local cache. When it must and the hub does not answer a TCP connect within
    ``HUB_PROBE_TIMEOUT_S``, raise :class:`ModelUnavailableError` at once instead of letting
    transformers retry for about a minute."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, "config.json", revision=revision)
    if isinstance(cached, str):
        return False
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise ModelUnavailableError(f"{model}: not a local directory and not in the Hugging Face cache, and "
                                    "HF_HUB_OFFLINE is set: download it on a connected machine (hf download "
                                    f"{model} --local-dir DIR) and pass hf:DIR")
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as e:
        raise ModelUnavailableError(f"{model}: not a local directory and not in the Hugging Face cache, and the hub "
                                    f"({host}:{port}) is unreachable ({e.__class__.__name__}: {e}): download it on a "
                                    f"connected machine (hf download {model} --local-dir DIR) and pass hf:DIR") from None
    return True


_DIGESTS: dict[tuple, str] = {}  # weights_signature -> sha256, per process


def weights_signature(path: str) -> tuple:
    """(resolved dir, (name, size, mtime_ns) of each weight file): what a digest is cached by."""
    root = Path(path).expanduser().resolve()
    files = sorted(p for p in root.iterdir() if p.suffix in (".safetensors", ".bin"))
    return (str(root), tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files))


def weights_hint(path: str) -> dict[str, Any] | None:
    """The signature and digest of a local checkpoint already hashed in this process, to hand to
    the embedding actors so they do not hash the same files again (``None`` if not hashed)."""
    if not _is_local(path):
        return None
    sig = weights_signature(path)
    return {"signature": [sig[0], [list(f) for f in sig[1]]], "sha256": _DIGESTS[sig]} if sig in _DIGESTS else None


def trust_weights_hint(hint: dict[str, Any] | None) -> None:
    """Accept a digest computed by the job's driver for files whose signature (path, sizes and
    mtimes) still matches here; any change of the files makes the actor hash them itself."""
    if hint:
        sig = (hint["signature"][0], tuple(tuple(f) for f in hint["signature"][1]))
        if Path(sig[0]).is_dir() and weights_signature(sig[0]) == sig:
            _DIGESTS[sig] = hint["sha256"]


def _weights_digest(path: str) -> str | None:
    """sha256 over the safetensors/bin weight files of a local checkpoint (for the fingerprint);
    computed once per process and files (cached by :func:`weights_signature`)."""
    sig = weights_signature(path)
    if not sig[1]:
        return None
    if sig not in _DIGESTS:
        _DIGESTS[sig] = _hash_weights(sig)
    return _DIGESTS[sig]


def _hash_weights(sig: tuple) -> str:
    files = [Path(sig[0]) / name for name, _, _ in sig[1]]
    import hashlib

    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()

