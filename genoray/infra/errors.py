"""Exceptions shared by every layer."""

from __future__ import annotations


class InvariantError(RuntimeError):
    """An internal invariant broke (counts that must add up do not, a shard holds other rows
    than were read): a bug in genoray, not bad input. The CLI reports it as such (exit 70)."""


class ChecksumError(ValueError):
    """A file does not match the sha256 recorded for it in its manifest."""


class FormatError(ValueError):
    """An artifact's document is not one this genoray reads: no or an unknown format version,
    a missing or unknown key, or a value of the wrong type. The message names the file."""
