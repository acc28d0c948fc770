"""Exceptions shared across stages."""

from __future__ import annotations


class InvariantError(RuntimeError):
    """A broken internal invariant (counts that must add up, rows written vs read): a bug in
    genoray or a corrupted artifact, never bad user input. The CLI reports it as a bug."""
