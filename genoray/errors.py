"""Exceptions shared across stages."""

from __future__ import annotations


class InvariantError(RuntimeError):
    """An internal invariant broke (counts that must add up do not, a shard holds other rows
    than were read): a bug in genoray, not bad input. The CLI reports it as such (exit 70)."""
