"""The record: what every reader yields and every later stage is keyed by.

Sequence records are Arrow batches of :data:`RECORD_SCHEMA`::

    seq_id: string (unique per read call), sequence: string (cleaned, A/C/G/T/N),
    label: string | null, domain: string | null, split: string | null,
    meta: string | null (JSON object of extra header tags / columns)

The embedding store keeps ``seq_id``, ``label``, ``domain`` and ``split`` of each record under
the same column names (:mod:`genoray.embedding.store`).
"""

from __future__ import annotations

import pyarrow as pa

SEQ_ID = "seq_id"
SEQUENCE = "sequence"
LABEL = "label"
DOMAIN = "domain"
SPLIT = "split"
META = "meta"

RECORD_SCHEMA = pa.schema(
    [
        pa.field(SEQ_ID, pa.string(), nullable=False),
        pa.field(SEQUENCE, pa.string(), nullable=False),
        pa.field(LABEL, pa.string()),
        pa.field(DOMAIN, pa.string()),
        pa.field(SPLIT, pa.string()),
        pa.field(META, pa.string()),
    ]
)
