"""``encoder_from_artifact``: the (fitted) encoder that made an embedding store, an index or a
bundle, so new data embedded with it is comparable (same fingerprint) with what it made."""

from __future__ import annotations

from pathlib import Path

from genoray.bundle import current_version, verify_bundle
from genoray.bundle.manifest import CURRENT
from genoray.bundle.manifest import MANIFEST as BUNDLE_MANIFEST
from genoray.embedding.store import MANIFEST as STORE_MANIFEST
from genoray.embedding.store import read_encoder_record
from genoray.embedding.store import read_manifest as read_store_manifest
from genoray.encoders import Encoder, encoder_from_spec
from genoray.index import MANIFEST as INDEX_MANIFEST
from genoray.index.manifest import IndexManifest
from genoray.infra import fs
from genoray.infra.documents import read_document


def encoder_from_artifact(path: str | Path, trust_remote_code: bool = False) -> Encoder:
    """The encoder of an artifact (a local path or an ``s3://`` / ``gs://`` URI): an embedding
    store (``store.json``, or ``encoder.json`` of a store whose first run was interrupted), an
    index directory, a bundle root (its ``CURRENT`` version) or one bundle version directory.
    Embedding new data with it makes stores comparable even for encoders fitted on their data.
    ``trust_remote_code`` is the command's decision; the artifact's recorded value is ignored."""
    trust = trust_remote_code
    if fs.is_file(fs.join(path, STORE_MANIFEST)):
        return encoder_from_spec(read_store_manifest(path).encoder, trust)
    rec = read_encoder_record(path)
    if rec is not None:
        return encoder_from_spec(rec.fitted, trust)
    if fs.is_file(fs.join(path, CURRENT)):
        version = current_version(path)
        if version is None:
            raise ValueError(f"{path}: bundle root has no CURRENT version")
        return encoder_from_spec(verify_bundle(path, version).encoder, trust)
    if fs.is_file(fs.join(path, BUNDLE_MANIFEST)):  # one version directory: <root>/versions/<version>
        uri = str(fs.as_path(path)).rstrip("/")
        root, version = uri.rsplit("/", 2)[0], uri.rsplit("/", 1)[1]
        return encoder_from_spec(verify_bundle(root, version).encoder, trust)
    if fs.is_file(fs.join(path, INDEX_MANIFEST)):
        m = read_document(IndexManifest, fs.join(path, INDEX_MANIFEST))
        if m.encoder is None:
            raise ValueError(f"{path}: the index records no encoder")
        return encoder_from_spec(m.encoder, trust)
    raise FileNotFoundError(f"{path}: not an embedding store, index or bundle (no {STORE_MANIFEST}, {INDEX_MANIFEST}, "
                            f"{CURRENT} or {BUNDLE_MANIFEST})")
