"""Read FASTA/FASTQ (optionally gzipped), Parquet and CSV/TSV into cleaned Arrow batches.

Output contract: :data:`genoray.sequences.records.RECORD_SCHEMA` record batches
(``seq_id, sequence, label, domain, split, meta``). Every call fills a :class:`ReadReport`
with records read, accepted and rejected by reason, so that ``read == accepted + rejected``.

Malformed *files* (no FASTA header, truncated gzip, binary junk, non-ASCII bytes, a FASTQ
whose qualities do not match, a ``<file>.sha256`` sidecar that does not match) raise
:class:`SequenceFormatError` naming the file, the record number and the reason. Malformed *records* (empty, too short/long, too many N, non-DNA
characters, repeated ids) are rejected and counted, never silently dropped.

FASTA/FASTQ parsing uses ``dnaio`` (C-accelerated, handles gzip/bgzip/multi-member gzip and
reports line numbers); see ``bench/bench_parsers.py`` for the comparison that chose it.

Modules along the flow: :mod:`.reader` (entry points), :mod:`.fasta`, :mod:`.tables`,
:mod:`.builder` (cleaning, ids, windows -> batches), :mod:`.report` (counts and errors),
:mod:`.units` (inputs -> resumable units of work), :mod:`.records` (the record schema),
:mod:`.clean` (the cleaning policy applied to one string, reverse complement, tiles and
windows), :mod:`.splits` (held-out splits for data without one) and :mod:`.lengths` (crops
and the length grid of the OOD scorer and the length calibration).
"""

from genoray.sequences.clean import Cleaner, reverse_complement, tile, window_starts
from genoray.sequences.fasta import FASTA_SPLITTABLE, fasta_record_start, header_fields, parse_header
from genoray.sequences.lengths import crop, length_grid
from genoray.sequences.reader import (
    CSV_SUFFIXES,
    FASTX_SUFFIXES,
    PARQUET_SUFFIXES,
    detect_format,
    iter_file,
    iter_sequences,
    read_sequences,
    verify_sidecar,
    with_split_cutoffs,
)
from genoray.sequences.report import MAX_REJECT_EXAMPLES, ReadReport, Reject, SequenceFormatError
from genoray.sequences.units import expand_inputs, plan_units

__all__ = [
    "CSV_SUFFIXES", "FASTA_SPLITTABLE", "FASTX_SUFFIXES", "MAX_REJECT_EXAMPLES", "PARQUET_SUFFIXES", "Cleaner",
    "ReadReport", "Reject", "SequenceFormatError", "detect_format", "expand_inputs", "fasta_record_start",
    "header_fields", "iter_file", "iter_sequences", "parse_header", "plan_units", "read_sequences",
    "reverse_complement", "tile", "verify_sidecar", "window_starts", "with_split_cutoffs", "crop", "length_grid",
]
