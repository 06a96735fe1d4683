"""QEBA (Li, Xu, Zhang, Yang & Li, CVPR 2020, "QEBA: query-efficient boundary-based blackbox attack"):
HopSkipJump whose Monte-Carlo probes are drawn in a low-dimensional subspace, the low-frequency DCT
block (QEBA-F) or a bilinearly upsampled small image (QEBA-S). The gradient estimate then lives in
``d' << d`` dimensions, so the same number of queries estimates it far better where the boundary's
normal is mostly low-frequency (natural and medical images alike)."""

from __future__ import annotations

import torch

from medshield.attacks.decision import DECISION_ATTACKS
from medshield.attacks.decision.hsja import HopSkipJump
from medshield.attacks.decision.oracle import LabelOracle
from medshield.attacks.decision.subspace import sample_directions
from medshield.types import Norm


@DECISION_ATTACKS.register("qeba")
class QEBA(HopSkipJump):
    """QEBA, L2 or L-inf, untargeted or targeted: HSJA (same step-size and binary searches, same
    arguments) with probes ``u = unit(P z)``, ``z`` Gaussian in the reduced space of side ``H / ratio``
    (default: ``max(14, H / 4)``, so 14x14 for 28 px and 56x56 for 224 px) and ``P`` the inverse DCT of the low-frequency block (``subspace="dct"``, QEBA-F) or bilinear
    upsampling (``"resize"``, QEBA-S). Images ``[N, C, H, W]`` in [0, 1].

    Example:
        attack = QEBA(subspace="dct")
        results = attack(model_label_fn(model), images, labels, budgets=[1000, 2000], seed=0)
        results[2000].l2.median()
    """

    def __init__(self, *, norm: Norm | str = Norm.L2, subspace: str = "dct", ratio: float | None = None, gamma: float = 1.0,
                 init_evals: int = 100, max_evals: int = 10_000, max_step_halvings: int = 25,
                 max_rows: int = 32_768) -> None:
        super().__init__(norm=norm, gamma=gamma, init_evals=init_evals, max_evals=max_evals,
                         max_step_halvings=max_step_halvings, max_rows=max_rows)
        if subspace not in ("dct", "resize") or (ratio is not None and ratio < 1):
            raise ValueError(f"QEBA needs subspace 'dct' or 'resize' and ratio >= 1, got {subspace!r}, {ratio}")
        self.subspace, self.ratio = subspace, ratio

    def directions(self, oracle: LabelOracle, idx: torch.Tensor, x_adv: torch.Tensor, n_evals: int,
                   generator: torch.Generator) -> torch.Tensor:
        return sample_directions(x_adv.shape[0] * n_evals, tuple(x_adv.shape[1:]), generator, self.subspace, self.ratio)
