"""genoray: retrieval-augmented genomic prediction on frozen DNA embeddings.

Data flow (each arrow is one public function; the CLI, jobs/ and this API call the same ones)::

    FASTA/FASTQ(.gz)/Parquet/CSV --read_sequences--> Arrow batches (seq_id, sequence, label, ...)
        --embed_sequences--> embedding store (Parquet + store.json)
        --build_index-->     index dir (FAISS + ids/labels Arrow + manifest.json with sha256)
        --train_head-->      head dir (head.json + head.npz + ood.json with sha256)
        --write_bundle / publish--> bundle root (versions/<v>/ + atomic CURRENT)
        --Predictor-->       Prediction(label, probabilities, neighbours, ood_score)

The packages follow that flow, each importing only the ones below it: ``infra`` and ``config``
at the bottom, then ``sequences``, ``encoders``, ``embedding``, ``index``, ``heads``,
``scoring``, ``bundle``, ``predict``, ``serving`` and ``evaluation``, ``pipeline``, ``cli``.
Importing this package imports no torch, ray or faiss; the names below load on first use.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_CONFIGS = ("CleanPolicy", "ReadConfig", "EncoderChoice", "KmerConfig", "PositionConfig", "HFConfig", "EmbedConfig",
            "IndexConfig", "ClusterSpec", "HeadConfig", "OODConfig", "ReindexConfig", "ShiftConfig", "EvaluateConfig",
            "PredictConfig", "PublishConfig", "ServeConfig", "ServiceLimits")
_LAZY = {
    **{name: "genoray.config" for name in _CONFIGS},
    "read_sequences": "genoray.sequences",
    "iter_sequences": "genoray.sequences",
    "ReadReport": "genoray.sequences",
    "SequenceFormatError": "genoray.sequences",
    "KmerEncoder": "genoray.encoders",
    "HFEncoder": "genoray.encoders",
    "encoder_from_spec": "genoray.encoders",
    "encoder_from_name": "genoray.encoders",
    "embed_sequences": "genoray.embedding",
    "EmbeddingStore": "genoray.embedding",
    "build_index": "genoray.index",
    "VectorIndex": "genoray.index",
    "KNNVoteHead": "genoray.heads",
    "LinearHead": "genoray.heads",
    "FusedHead": "genoray.heads",
    "train_head": "genoray.pipeline",
    "write_bundle": "genoray.pipeline",
    "publish": "genoray.bundle",
    "Predictor": "genoray.predict",
    "Prediction": "genoray.predict",
    "build_app": "genoray.serving",
    "ShiftDetector": "genoray.evaluation",
    "evaluate_store": "genoray.evaluation",
    "reindex": "genoray.pipeline",
    "run_quickstart": "genoray.pipeline",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'genoray' has no attribute {name!r}")
