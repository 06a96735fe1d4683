"""Sign-OPT (Cheng et al., ICLR 2020, "Sign-OPT: a query-efficient hard-label adversarial attack"),
batched across images: the gradient of ``g(theta)`` is estimated from the sign of single queries,
then OPT's line search. Maths after cmhcbb/attackbox ``attack/Sign_OPT.py``."""

from __future__ import annotations

import torch

from medshield.attacks.decision import DECISION_ATTACKS
from medshield.attacks.decision.directions import INF
from medshield.attacks.geometry import expand
from medshield.attacks.decision.opt import DirectionSearch, perturbed_directions
from medshield.attacks.decision.oracle import LabelOracle
from medshield.types import Norm


@DECISION_ATTACKS.register("sign_opt")
class SignOPT(DirectionSearch):
    """Sign-OPT, L2: ``grad ~ mean_k sign_k u_k`` where ``sign_k = -1`` if ``x0 + g(theta) * unit(theta +
    beta u_k)`` is adversarial (``g`` would shrink), else +1; one query per probe (``k`` probes).

    Example:
        attack = SignOPT(k=200)
        results = attack(model_label_fn(model), images, labels, budgets=[1000, 5000], seed=0)
        results[5000].l2.median()
    """

    def __init__(self, *, norm: Norm | str = Norm.L2, alpha: float = 0.2, beta: float = 0.001, n_directions: int = 100,
                 k: int = 200, line_steps: int = 15) -> None:
        super().__init__(norm=norm, alpha=alpha, beta=beta, n_directions=n_directions, line_steps=line_steps)
        self.k = k

    def estimate(self, oracle: LabelOracle, idx: torch.Tensor, x0: torch.Tensor, theta: torch.Tensor, g: torch.Tensor,
                 beta: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m, k = idx.numel(), self.k
        u, rep, probe = perturbed_directions(theta, beta, k, generator)
        adv = oracle.query(idx[rep], x0[rep] + expand(g[rep], u) * probe)
        sign = torch.where(adv, -1.0, 1.0)
        grad = (expand(sign, u) * u).view(m, k, *x0.shape[1:]).mean(dim=1)
        return grad, theta, torch.full((m,), INF)
