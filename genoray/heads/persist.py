"""A fitted :class:`~genoray.heads.fused.FusedHead` on disk, without pickle.

A head directory holds::

    head.json                   HeadManifest, signed: settings, classes, mixture, calibration, the
                                sha256 of every other file
    head.npz                    the linear part and the OOD reference (numeric arrays only)
    trees.ubj                   (heads with a tree part) XGBoost's UBJSON model
    length_calibration.json     (heads fitted with sequences) the temperature per query length

plus, written by other stages beside it: the OOD scorer (``ood.json`` + ``ood.npz``,
:mod:`genoray.scoring.ood`) and a target's class priors (``priors.json``,
:mod:`genoray.scoring.priors`). :func:`load_head` verifies every checksum before it reads.
"""

from __future__ import annotations

import hashlib
from dataclasses import field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from sklearn.utils.validation import check_is_fitted

from genoray.embedding.store import MANIFEST as STORE_MANIFEST
from genoray.heads import length_calibration
from genoray.heads.fused import FusedHead
from genoray.heads.parts import LinearHead, TreeHead
from genoray.index.manifest import MANIFEST as INDEX_MANIFEST
from genoray.infra.artifacts import read_npz, read_signed, sha256_file, write_npz, write_signed
from genoray.infra.documents import from_json, record, to_json
from genoray.infra.errors import ChecksumError
from genoray.infra.fs import atomic_write_bytes
from genoray.infra.names import safe_join

MANIFEST = "head.json"
ARRAYS = "head.npz"
TREES_FILE = "trees.ubj"


@record
class TreesFile:
    """The tree part's model file: its library and version, sha256, rounds and parameters."""

    library: str
    version: str
    file: str
    sha256: str
    rounds: int
    params: dict[str, Any]


@record
class HeadManifest:
    """The payload of ``head.json``. Format 3 added ``ood_reference_rows`` to ``params``; format 2
    heads load with its default, format 1 heads (kNN + linear with a temperature) as such.

    Attributes:
        params: the head's settings (``FusedHead.get_params()``).
        classes / linear_classes: class order of the head and of its linear part.
        n_features: embedding dimension.
        weight / mixture: the kNN vote's weight, and every part's (formats 2 and 3).
        C: the linear part's inverse regularisation.
        calibration / calibration_method / calibration_scores / isotonic_maps: the calibration
            (a temperature, or isotonic maps stored in ``head.npz``) and how it was chosen.
        val_scores / selection: validation log-loss per mixture and what was chosen, how.
        trees: the tree part's model file (``None``: no tree part).
        length_calibration: sha256 of ``length_calibration.json`` (``None``: none).
        encoder_fingerprint: the encoder the head was fitted on.
        npz_sha256: sha256 of ``head.npz``.
    """

    KIND: ClassVar[str] = "head"
    FORMAT_VERSION: ClassVar[int] = 3
    READABLE: ClassVar[tuple[int, ...]] = (1, 2, 3)
    format_version: int
    kind: str
    params: dict[str, Any]
    classes: tuple[str, ...]
    linear_classes: tuple[str, ...]
    n_features: int
    weight: float
    C: float
    val_scores: dict[str, float]
    encoder_fingerprint: str | None
    npz_sha256: str
    calibration: float | None = None
    mixture: dict[str, float] | None = None
    calibration_method: str = "temperature"
    calibration_scores: dict[str, float | None] = field(default_factory=dict)
    isotonic_maps: int = 0
    selection: dict[str, Any] = field(default_factory=dict)
    trees: TreesFile | None = None
    length_calibration: str | None = None


def save_head(head: FusedHead, out_dir: str | Path, encoder_fingerprint: str | None = None) -> None:
    """Write ``head.json`` + ``head.npz`` (+ ``trees.ubj``, XGBoost's UBJSON model, when the
    head has a tree part); the JSON records every file's sha256 and its own payload hash."""
    check_is_fitted(head, "mixture_")
    out = Path(out_dir)
    if (out / MANIFEST).exists():
        raise FileExistsError(f"{out}: a head already exists here; write a new directory")
    lin = head.linear_
    iso = {}
    for i, (xt, yt) in enumerate(head.isotonic_ or []):
        iso[f"isotonic_x_{i}"], iso[f"isotonic_y_{i}"] = xt, yt
    write_npz(out / ARRAYS, coef=lin.coef_, intercept=lin.intercept_, mean=lin.mean_, scale=lin.scale_,
              ood_reference=head.ood_reference_, **iso)
    trees = None
    if head.trees_ is not None:
        import xgboost  # lazy: xgboost is heavy and only heads with a tree part need it

        atomic_write_bytes(out / TREES_FILE, head.trees_.to_bytes())
        trees = TreesFile(library="xgboost", version=xgboost.__version__, file=TREES_FILE,
                          sha256=sha256_file(out / TREES_FILE), rounds=head.trees_.rounds_,
                          params=head.trees_.get_params())
    doc = HeadManifest(
        format_version=HeadManifest.FORMAT_VERSION, kind="fused", params=head.get_params(),
        classes=tuple(str(c) for c in head.classes_), linear_classes=tuple(str(c) for c in lin.classes_),
        n_features=int(head.n_features_in_), weight=head.weight_, mixture=head.mixture_, C=head.C_,
        calibration=head.calibration_, calibration_method=head.calibration_method_,
        calibration_scores=head.calibration_scores_, isotonic_maps=len(head.isotonic_ or []),
        val_scores=head.val_scores_, selection=head.selection_, trees=trees,
        length_calibration=length_calibration.save(head, out), encoder_fingerprint=encoder_fingerprint,
        npz_sha256=sha256_file(out / ARRAYS))
    write_signed(out / MANIFEST, to_json(doc))


def read_head_manifest(path: str | Path) -> HeadManifest:
    """The verified ``head.json`` of a head directory (format and payload hash checked)."""
    f = Path(path) / MANIFEST
    if not f.is_file():
        seen = next((what for name, what in ((STORE_MANIFEST, "an embedding store"), (INDEX_MANIFEST, "an index"))
                     if (Path(path) / name).is_file()), None)
        raise FileNotFoundError(f"{path}: not a head directory (no {MANIFEST})" + (f"; it is {seen}" if seen else "")
                                + "; give the --out directory of `genoray train`")
    doc = from_json(HeadManifest, read_signed(f), f)
    if doc.kind != "fused":
        raise ValueError(f"{f}: unsupported head kind {doc.kind!r} (this genoray reads fused heads)")
    return doc


def load_head(path: str | Path, encoder_fingerprint: str | None = None) -> FusedHead:
    """Load and verify a saved head (sha256 of JSON payload, npz and tree model; encoder
    fingerprint). Format-1 heads (kNN + linear, temperature) load as such."""
    path = Path(path)
    doc = read_head_manifest(path)
    if sha256_file(path / ARRAYS) != doc.npz_sha256:
        raise ChecksumError(f"{path / ARRAYS}: sha256 does not match {MANIFEST}")
    raw = None
    if doc.trees is not None:
        trees = Path(safe_join(path, doc.trees.file, path / MANIFEST))
        raw = trees.read_bytes()
        if hashlib.sha256(raw).hexdigest() != doc.trees.sha256:
            raise ChecksumError(f"{trees}: sha256 does not match {MANIFEST}")
    if encoder_fingerprint and doc.encoder_fingerprint and encoder_fingerprint != doc.encoder_fingerprint:
        raise ValueError(f"{path}: head was trained on encoder {doc.encoder_fingerprint}, not {encoder_fingerprint}")
    arrays = read_npz(path / ARRAYS)
    head = FusedHead(**doc.params)
    head.classes_ = np.array(doc.classes, dtype=object)
    head.n_features_in_ = doc.n_features
    head.weight_, head.C_ = doc.weight, doc.C
    head.val_scores_ = doc.val_scores
    head.ood_reference_ = arrays["ood_reference"]
    if doc.format_version == 1:
        head.mixture_ = {"knn": head.weight_, "linear": 1.0 - head.weight_, "trees": 0.0}
        head.calibration_, head.calibration_method_, head.isotonic_ = doc.calibration, "temperature", None
        head.calibration_scores_, head.selection_ = {}, {"candidates": "linear", "format_version": 1}
    else:
        head.mixture_ = dict(doc.mixture or {})
        head.calibration_, head.calibration_method_ = doc.calibration, doc.calibration_method
        head.calibration_scores_, head.selection_ = dict(doc.calibration_scores), dict(doc.selection)
        head.isotonic_ = [(arrays[f"isotonic_x_{i}"], arrays[f"isotonic_y_{i}"]) for i in range(doc.isotonic_maps)] or None
    lin = LinearHead(C=head.C_)
    lin.classes_ = np.array(doc.linear_classes, dtype=object)
    lin.n_features_in_ = doc.n_features
    lin.coef_, lin.intercept_, lin.mean_, lin.scale_ = arrays["coef"], arrays["intercept"], arrays["mean"], arrays["scale"]
    if lin.coef_.shape[1] != head.n_features_in_:
        raise ValueError(f"{path}: coef has {lin.coef_.shape[1]} features, {MANIFEST} says {head.n_features_in_}")
    head.linear_ = lin
    head.trees_ = None
    if raw is not None and doc.trees is not None:
        head.trees_ = TreeHead.from_bytes(raw, head.classes_, head.n_features_in_, doc.trees.rounds, doc.trees.params)
    head.encoder_fingerprint_ = doc.encoder_fingerprint
    head.length_calibration_ = length_calibration.LengthCalibration.load(path, doc.length_calibration) \
        if doc.length_calibration else None
    return head
