"""Knowing when a prediction is wrong: the per-query OOD score (:mod:`.ood`), label-shift
correction for a target's class priors (:mod:`.priors`) and adaptation to a new domain without
its labels (:mod:`.adapt`)."""

from genoray.scoring.adapt import DomainNormalizer, PseudoLabeler, domain_normalize
from genoray.scoring.ood import OODScorer
from genoray.scoring.priors import PriorShift

__all__ = ["DomainNormalizer", "OODScorer", "PriorShift", "PseudoLabeler", "domain_normalize"]
