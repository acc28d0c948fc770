"""What every encoder is: the :class:`Encoder` protocol and its :func:`fingerprint`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from genoray.infra.artifacts import sha256_json


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
        """JSON-serialisable spec that :func:`genoray.encoders.encoder_from_spec` rebuilds the encoder from."""
        ...


def fingerprint(encoder: Encoder) -> str:
    """Stable id of an encoder: sha256 of its canonical JSON spec (first 16 hex digits)."""
    return sha256_json(encoder.spec())[:16]
