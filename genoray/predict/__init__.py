"""Prediction: encoder + index + head -> :class:`Prediction` (:mod:`.predictor`; plain Python,
no Ray) and the batch outputs (:mod:`.output`: JSON lines, TSV, Parquet)."""

from genoray.predict.predictor import Hits, Neighbour, Prediction, Predictor, predict_hits, predict_vectors

__all__ = ["Hits", "Neighbour", "Prediction", "Predictor", "predict_hits", "predict_vectors"]
