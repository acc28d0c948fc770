"""``convert_weights``: turn a pickle checkpoint (``pytorch_model.bin``) into safetensors, safely.

Many DNA models on the hub (and in packages such as ``anticapt``) ship their weights only as
``pytorch_model.bin``, a Python pickle: unpickling it can run arbitrary code, so
:class:`~genoray.encoders.hf.HFEncoder` refuses it. This module converts such a checkpoint
once, with ``torch.load(weights_only=True, map_location="cpu")`` only: torch's restricted
unpickler, which accepts tensors, storages and plain containers and refuses every other
global (the refusal and its reason are reported, nothing is executed). It then

* checks that the result is a flat ``{name: tensor}`` state dict,
* writes ``DST/model.safetensors`` (shared storages are copied apart; safetensors cannot hold
  aliases) and reads it back to check every tensor is identical,
* copies the configuration, tokenizer and model-code files (``*.json``, ``*.py``, ``*.txt``,
  ``*.model``, ``*.md``, ``*.tiktoken``) but never another pickle or weight file,
* returns the sha256 that an encoder spec pins (``weights_sha256`` of ``hf:DST``), so a store
  or index built from ``DST`` refuses any other weights later.

genoray never unpickles anything anywhere else.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from genoray.encoders.hf import _weights_digest
from genoray.infra.artifacts import sha256_file

PICKLE_NAMES = ("pytorch_model.bin",)
COPY_SUFFIXES = (".json", ".py", ".txt", ".model", ".md", ".tiktoken")
NEVER_COPY = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".safetensors", ".h5", ".msgpack", ".index.json")


class UnsafeCheckpointError(ValueError):
    """The checkpoint holds something torch's restricted (weights-only) unpickler refuses,
    or is not a plain state dict of tensors."""


def convert_weights(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """Convert ``SRC/pytorch_model.bin`` to ``DST/model.safetensors`` and copy the model's
    config, tokenizer and code files; returns a JSON-able report with ``weights_sha256``.

    Raises :class:`UnsafeCheckpointError` (with torch's reason) for anything the restricted
    unpickler refuses, ``FileNotFoundError`` if there is no checkpoint and ``FileExistsError``
    if ``DST`` already holds weights.
    """
    import torch
    from safetensors.torch import load_file, save_file

    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: not a model directory")
    ckpt = next((src / n for n in PICKLE_NAMES if (src / n).is_file()), None)
    if ckpt is None:
        if (src / "pytorch_model.bin.index.json").is_file():
            raise UnsafeCheckpointError(f"{src}: sharded pickle checkpoints are not supported; convert each shard")
        raise FileNotFoundError(f"{src}: no pytorch_model.bin to convert")
    if dst.resolve() == src.resolve():
        raise FileExistsError(f"{dst}: write the converted model to a new directory, not the source")
    if dst.exists() and any(p.suffix in (".safetensors", ".bin") for p in dst.iterdir()):
        raise FileExistsError(f"{dst}: already holds weights")
    try:
        # weights_only=True: torch's restricted unpickler; an explicit True is not overridden by
        # TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD. map_location: checkpoints saved on CUDA load on CPU.
        state = torch.load(ckpt, weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 -- UnpicklingError and friends: report torch's reason, run nothing
        reason = " ".join(str(e).split())
        m = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", reason)
        reason = m.group(1) if m else reason  # torch's message is mostly boilerplate around it
        raise UnsafeCheckpointError(f"{ckpt}: refused by the weights-only unpickler: {reason[:600]}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # Lightning-style wrapper
    if not isinstance(state, dict) or not state:
        raise UnsafeCheckpointError(f"{ckpt}: not a state dict (got {type(state).__name__})")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise UnsafeCheckpointError(f"{ckpt}: entries that are not tensors: {bad[:5]}")
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}  # no shared storage
    dst.mkdir(parents=True, exist_ok=True)
    out = dst / "model.safetensors"
    tmp = dst / ".model.safetensors.tmp"
    # one metadata key: safetensors writes the metadata map in hash order, and two keys made the
    # file (and the weights sha256 a spec pins) differ between two conversions of the same checkpoint
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    back = load_file(str(tmp))
    if back.keys() != tensors.keys() or any(not torch.equal(back[k], tensors[k]) for k in tensors):
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{out}: read-back differs from the checkpoint")
    tmp.replace(out)
    copied = []
    for p in sorted(src.iterdir()):
        if (p.is_file() and p.name.endswith(COPY_SUFFIXES) and not p.name.endswith(NEVER_COPY)
                and not p.name.startswith(".")):
            shutil.copy2(p, dst / p.name)
            copied.append(p.name)
    return {
        "source": str(ckpt), "out": str(out), "tensors": len(tensors),
        "parameters": int(sum(t.numel() for t in tensors.values())),
        "dtypes": sorted({str(t.dtype).replace("torch.", "") for t in tensors.values()}),
        "sha256": sha256_file(out), "weights_sha256": _weights_digest(str(dst)), "copied": copied,
    }
