"""genoray: retrieval-augmented genomic prediction on frozen DNA embeddings.

Data flow (each arrow is one public function; the CLI, jobs/ and this API call the same ones)::

    FASTA/FASTQ(.gz)/Parquet/CSV --read_sequences--> Arrow batches (seq_id, sequence, label, ...)
        --embed_sequences--> embedding store (Parquet + store.json)
        --build_index-->     index dir (FAISS + ids/labels Parquet + manifest.json with sha256)
        --FusedHead.fit-->   head dir (head.json + head.npz with sha256)
        --Predictor-->       Prediction(label, probabilities, neighbours, ood_score)

Importing this package imports no torch, ray or faiss; heavy modules load on first use.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "read_sequences": "genoray.sequences",
    "iter_sequences": "genoray.sequences",
    "ReadReport": "genoray.sequences",
    "SequenceFormatError": "genoray.sequences",
    "CleanPolicy": "genoray.config",
    "ReadConfig": "genoray.config",
    "KmerConfig": "genoray.config",
    "PositionConfig": "genoray.config",
    "HFConfig": "genoray.config",
    "EmbedConfig": "genoray.config",
    "IndexConfig": "genoray.config",
    "HeadConfig": "genoray.config",
    "ReindexConfig": "genoray.config",
    "ShiftConfig": "genoray.config",
    "ServeConfig": "genoray.config",
    "ServiceLimits": "genoray.config",
    "KmerEncoder": "genoray.encoders.kmer",
    "HFEncoder": "genoray.encoders.hf",
    "encoder_from_spec": "genoray.encoders",
    "encoder_from_name": "genoray.encoders",
    "embed_sequences": "genoray.embed",
    "EmbeddingStore": "genoray.store",
    "build_index": "genoray.index",
    "VectorIndex": "genoray.index",
    "KNNVoteHead": "genoray.heads",
    "LinearHead": "genoray.heads",
    "FusedHead": "genoray.heads",
    "Predictor": "genoray.predictor",
    "Prediction": "genoray.predictor",
    "run_quickstart": "genoray.quickstart",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'genoray' has no attribute {name!r}")
