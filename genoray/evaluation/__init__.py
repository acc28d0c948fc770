"""Knowing how good and how comparable the predictions are: metrics (:mod:`.metrics`), a head
scored on a held-out split (:mod:`.report`), studies of methods x datasets x protocols with
time and energy (:mod:`.study`), the LoRA fine-tune they compare with (:mod:`.finetune`) and
distribution shift in embedding space (:mod:`.shift`)."""

from genoray.evaluation.report import evaluate_store, evaluation_report, format_evaluation
from genoray.evaluation.shift import ShiftDetector, ShiftReport, drift_rule
from genoray.evaluation.study import evaluate

__all__ = ["ShiftDetector", "ShiftReport", "drift_rule", "evaluate", "evaluate_store", "evaluation_report",
           "format_evaluation"]
