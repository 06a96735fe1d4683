"""Decision-based (label-only) black-box attacks: HSJA, GBBA, QEBA, CGBA, RayS, a surrogate-guided
HSJA, OPT, Sign-OPT, Boundary, all talking to
one query-counting :class:`~medshield.attacks.decision.oracle.LabelOracle`."""

from medshield.registry import Registry

DECISION_ATTACKS: Registry = Registry("decision attack")

from medshield.attacks.decision.base import DecisionAttack, results_by_budget  # noqa: E402
from medshield.attacks.decision.oracle import LabelFn, LabelOracle, model_label_fn  # noqa: E402
from medshield.attacks.decision import boundary, cgba, hsja, opt, qeba, rays, sign_opt, surrogate  # noqa: E402,F401

__all__ = ["DECISION_ATTACKS", "DecisionAttack", "LabelFn", "LabelOracle", "model_label_fn", "results_by_budget"]
