"""DNA strings: cleaning under a :class:`~genoray.config.CleanPolicy`, reverse complement,
tiling and window coordinates.

Plain Python over one string at a time: the readers clean every record with it, and serve-time
code (:class:`~genoray.predict.predictor.Predictor`, the HTTP service) cleans queries with the
same :class:`Cleaner` and the policy the store recorded.
"""

from __future__ import annotations

import logging

from genoray.config import CleanPolicy

log = logging.getLogger(__name__)

_IUPAC_AMBIGUOUS = "RYSWKMBDHV"
_INVALID = "!"


def _translation_table(policy: CleanPolicy) -> dict[int, int]:
    table: dict[int, int] = {c: ord(_INVALID) for c in range(128)}
    for c in "ACGTN":
        table[ord(c)] = ord(c)
        if policy.uppercase:
            table[ord(c.lower())] = ord(c)
    if policy.rna_to_dna:
        table[ord("U")] = ord("T")
        if policy.uppercase:
            table[ord("u")] = ord("T")
    if policy.ambiguous == "to_n":
        for c in _IUPAC_AMBIGUOUS:
            table[ord(c)] = ord("N")
            if policy.uppercase:
                table[ord(c.lower())] = ord("N")
    return table


class InvalidSequence(ValueError):
    """A query sequence that its policy rejects: ``index`` in the request and the ``reason``."""

    def __init__(self, index: int, reason: str):
        self.index, self.reason = index, reason
        super().__init__(f"sequence {index}: {reason}")


class Cleaner:
    """Applies a :class:`CleanPolicy` to one sequence; returns ``(clean, None)`` or ``(None, reason)``."""

    def __init__(self, policy: CleanPolicy):
        self.policy = policy
        self._table = _translation_table(policy)
        self._strip = str.maketrans("", "", "-.") if policy.strip_gaps else None

    def __call__(self, raw: str) -> tuple[str | None, str | None]:
        """``(cleaned sequence, None)``, or ``(None, "reason: detail")`` when rejected."""
        p = self.policy
        if p.long_records == "window" and len(raw) > p.max_length:
            return raw, None  # the reader cuts it into windows and cleans each (no record-size copy)
        seq = "".join(raw.split()) if (" " in raw or "\t" in raw or "\r" in raw) else raw
        if self._strip is not None:
            seq = seq.translate(self._strip)
        if not seq:
            return None, "empty: sequence has no bases"
        if not seq.isascii():
            bad = next(i for i, c in enumerate(seq) if ord(c) > 127)
            return None, f"invalid_character: non-ASCII {seq[bad]!r} at position {bad + 1}"
        clean = seq.translate(self._table)
        if _INVALID in clean:
            bad = clean.index(_INVALID)
            why = "ambiguous_base" if seq[bad].upper() in _IUPAC_AMBIGUOUS else "invalid_character"
            return None, f"{why}: {seq[bad]!r} at position {bad + 1}"
        n = len(clean)
        if n < p.min_length:
            return None, f"too_short: length {n} < min_length {p.min_length}"
        if n > p.max_length:
            return None, f"too_long: length {n} > max_length {p.max_length}"
        if p.max_n_fraction < 1.0:
            n_count = clean.count("N")
            if n_count and n_count / n > p.max_n_fraction:
                return None, f"too_many_n: {n_count}/{n} N > max_n_fraction {p.max_n_fraction}"
        return clean, None

    def clean_all(self, sequences: list[str]) -> list[str]:
        """Clean every sequence of one request; raises :class:`InvalidSequence` at the first
        rejected one."""
        out = []
        for i, s in enumerate(sequences):
            seq, why = self(s)
            if seq is None:
                raise InvalidSequence(i, why or "rejected")
            out.append(seq)
        return out


_COMPLEMENT = str.maketrans("ACGTN", "TGCAN")


def reverse_complement(seq: str) -> str:
    """Reverse complement of a cleaned (A/C/G/T/N) sequence."""
    return seq.translate(_COMPLEMENT)[::-1]


def tile(seq: str, size: int, overlap: int) -> list[str]:
    """Cut ``seq`` into windows of ``size`` bp overlapping by ``overlap``; the last window
    is aligned to the end so every base is covered and no window is shorter than needed."""
    return [seq[s : s + size] for s in window_starts(len(seq), size, overlap)]


def window_starts(length: int, size: int, overlap: int) -> list[int]:
    """0-based starts of ``size``-bp windows overlapping by ``overlap`` that cover ``length`` bp
    (the last window aligned to the end)."""
    if size <= 0 or overlap < 0 or overlap >= size:
        raise ValueError(f"need size > overlap >= 0, got size={size}, overlap={overlap}")
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, size - overlap))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts
