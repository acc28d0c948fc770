"""Embedding: sequence files -> a resumable embedding store (:func:`embed_sequences`).

Modules: :mod:`.job` (the job: plan units, run them, commit ``store.json``), :mod:`.unit`
(one unit read, embedded and committed), :mod:`.pool` (the Ray Data actor pool that runs the
units), :mod:`.store` (the store's format and its reader, :class:`EmbeddingStore`),
:mod:`.shards` (the files of one unit and their commit protocol) and :mod:`.synthetic`
(stores of synthetic embedding-like vectors, for index tests and benchmarks).
"""

from genoray.embedding.job import DuplicateIdError, EmbedReport, StoreConflictError, embed_sequences
from genoray.embedding.store import Embeddings, EmbeddingStore, StoreManifest, read_manifest

__all__ = ["DuplicateIdError", "EmbedReport", "EmbeddingStore", "Embeddings", "StoreConflictError", "StoreManifest",
           "embed_sequences", "read_manifest"]
