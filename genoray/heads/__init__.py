"""Classifier heads over embeddings, following the scikit-learn estimator API.

* :class:`KNNVoteHead`: similarity-weighted vote of the k nearest labeled neighbours (cosine,
  FAISS); ``exclude_self`` drops the query's own row when it is in the index.
* :class:`LinearHead`: standardised multinomial logistic regression. Scoring is numpy code
  equal to ``sklearn``'s ``predict_proba`` (tested to 1e-9), so a saved head needs no pickle.
* :class:`TreeHead`: gradient-boosted trees (XGBoost ``hist``), early-stopped, saved in
  XGBoost's UBJSON model format; SHAP feature contributions per prediction.
* :class:`FusedHead`: a mixture of the kNN vote, the linear head and the trees, its weights
  chosen by validation log-loss on a part of the training data (``head="linear"|"trees"|"auto"``
  limits the parts), then calibrated there (temperature or isotonic, chosen the same way).
  The fit uses a bounded sample of rows and the reference index (leave-one-out), so its cost
  does not grow quadratically with the store. It also stores the reference distribution of
  k-th-neighbour distances used for the out-of-distribution score.

Heads are saved with :func:`save_head` as ``head.json`` + ``head.npz`` (+ ``trees.ubj``), no
pickle, and verified by sha256 in :func:`load_head` (:mod:`.persist`).

A head fitted with its training sequences and encoder also has a temperature per query length
(:mod:`.length_calibration`, ``length_calibration.json``), applied by the Predictor.

Modules: :mod:`.common` (label codes, the vote, calibration, samples), :mod:`.parts`,
:mod:`.select` (the mixture and the do-no-harm tree test), :mod:`.fused`, :mod:`.persist`,
:mod:`.length_calibration`; the public names import from ``genoray.heads``.
"""

from genoray.heads.common import align_proba, apply_isotonic, calibrate, drop_own, stratified_sample, vote
from genoray.heads.fused import FusedHead
from genoray.heads.parts import KNNVoteHead, LinearHead, TreeHead
from genoray.heads.persist import HeadManifest, load_head, read_head_manifest, save_head
from genoray.heads.select import mixture_name

__all__ = [
    "FusedHead", "HeadManifest", "KNNVoteHead", "LinearHead", "TreeHead", "align_proba", "apply_isotonic", "calibrate",
    "drop_own", "load_head", "mixture_name", "read_head_manifest", "save_head", "stratified_sample", "vote",
]
