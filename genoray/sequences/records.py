"""Column names and Arrow schemas: the contract between stages.

Sequence records (output of :mod:`genoray.sequences`)::

    seq_id: string (unique per read call), sequence: string (cleaned, A/C/G/T/N),
    label: string | null, domain: string | null, split: string | null,
    meta: string | null (JSON object of extra header tags / columns)

Embedding store rows (output of :mod:`genoray.embed`)::

    seq_id, label, domain, split (as above), seq_hash: string (sha1 of the cleaned sequence),
    embedding: fixed_size_list<float32>[dim]
"""

from __future__ import annotations

import logging

import pyarrow as pa

SEQ_ID = "seq_id"
SEQUENCE = "sequence"
LABEL = "label"
DOMAIN = "domain"
SPLIT = "split"
META = "meta"
SEQ_HASH = "seq_hash"
EMBEDDING = "embedding"

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

log = logging.getLogger(__name__)


def embedding_schema(dim: int) -> pa.Schema:
    """Arrow schema of store rows with ``dim``-float embeddings."""
    return pa.schema(
        [
            pa.field(SEQ_ID, pa.string(), nullable=False),
            pa.field(LABEL, pa.string()),
            pa.field(DOMAIN, pa.string()),
            pa.field(SPLIT, pa.string()),
            pa.field(SEQ_HASH, pa.string()),
            pa.field(EMBEDDING, pa.list_(pa.float32(), dim), nullable=False),
        ]
    )
