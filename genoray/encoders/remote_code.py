"""Whether a transformers model may run its own Python code (``trust_remote_code``).

It is a decision of the person running the command (``--trust-remote-code``), never of an
artifact: :class:`~genoray.encoders.hf.HFEncoder` refuses a model whose ``config.json`` or
``tokenizer_config.json`` maps classes to its own ``*.py`` files (``auto_map``) unless the
command allowed it, before transformers reads the model; when allowed, a warning names the model
and its code files, and a hub id must be pinned to a revision.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class RemoteCodeRefused(ValueError):
    """A model needs its own Python code and the command that loads it was not given
    ``--trust-remote-code`` (an artifact cannot switch it on)."""


def code_files(model: str) -> list[str]:
    """The ``*.py`` files of a local model directory (what ``trust_remote_code`` would run)."""
    root = Path(model).expanduser()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.py")) if root.is_dir() else []


def remote_code_message(model: str) -> str:
    """Why a model with custom code is refused, and what to do."""
    files = code_files(model)
    which = f" ({', '.join(files[:5])})" if files else ""
    return (f"{model}: this model needs its own Python code{which}; genoray runs it only when the command "
            "that loads it is given --trust-remote-code (a store, index, head or bundle cannot switch it on): "
            "review that code, then pass --trust-remote-code")


def custom_code_map(model: str, revision: str | None, local: bool) -> dict[str, Any]:
    """The ``auto_map`` entries (classes in the model's own ``*.py`` files) of a model's
    ``config.json`` and ``tokenizer_config.json``: a local directory's, or the copies in the
    Hugging Face cache for a hub id (``{}`` when there are none or nothing is cached yet)."""
    found: dict[str, Any] = {}
    for name in ("config.json", "tokenizer_config.json"):
        if local:
            path: Any = Path(model).expanduser() / name
        else:
            from huggingface_hub import try_to_load_from_cache

            path = try_to_load_from_cache(model, name, revision=revision)
            path = Path(path) if isinstance(path, str) else None
        if path is None or not path.is_file():
            continue
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        auto = doc.get("auto_map") if isinstance(doc, dict) else None
        if isinstance(auto, dict):
            found.update(auto)
    return found


def check_remote_code_allowed(model: str, revision: str | None, local: bool) -> None:
    """Refuse ``trust_remote_code`` for a hub id without a ``revision`` (code that could change
    under the same name) or a bare name; warn, naming the model and its code files, otherwise."""
    if not local and ("/" not in model or not revision):
        raise ValueError(f"trust_remote_code requested for {model!r}: only allowed for a local directory or an "
                         "'org/name' hub id pinned to a revision (--hf-revision <commit>)")
    files = code_files(model) if local else []
    log.warning("trust_remote_code is on for %s%s: its own Python code will run in this process",
                model, f" (files: {', '.join(files[:10])})" if files else f" at revision {revision}")
