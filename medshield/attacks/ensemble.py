"""The AutoAttack ensemble (Croce & Hein, ICML 2020, *Reliable evaluation of adversarial robustness
with an ensemble of diverse parameter-free attacks*): APGD-CE, APGD-T, FAB-T and Square run in
sequence, each only on the images the previous ones left standing, so the robust accuracy is the
per-image worst case over the members, and each image records which member broke it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medshield.attacks.apgd import APGD
from medshield.attacks.base import Attack, FixedEpsilonAttack, is_adversarial
from medshield.attacks.fab import FAB
from medshield.attacks.square import Square
from medshield.types import AttackResult, Norm

STANDARD = ("apgd_ce", "apgd_t", "fab_t", "square")
CLEAN = "clean"  # ``broken_by`` of an image that is adversarial before any attack (misclassified)


class AutoAttack(FixedEpsilonAttack):
    """AutoAttack's standard protocol: ``members`` (default APGD-CE, APGD-T, FAB-T, Square) in order on
    the images still standing. ``steps`` iterations for APGD and FAB, ``targets`` target classes for
    APGD-T and FAB-T (capped at classes - 1), ``square_queries`` for Square; ``steps`` of 100 and
    ``square_queries`` of 5000 are AutoAttack's ``standard`` version.

    ``extras["broken_by"]``: per image, the member that made it adversarial (``"clean"`` when it was
    already misclassified, ``None`` when it withstood all); ``extras["member_queries"]`` the queries
    each member spent per image. ``queries`` sums the clean check, gradient calls and Square's forward passes.

    Example::

        aa = AutoAttack(norm="linf")
        res = aa.attack(model, images, labels, eps=2 / 255, generator=torch.Generator().manual_seed(0))
        print(1 - res.success_rate, res.extras["broken_by"])
    """

    name = "autoattack"

    def __init__(self, *, norm: Norm | str = Norm.LINF, steps: int = 100, targets: int = 9, square_queries: int = 5000,
                 members: Sequence[str] = STANDARD) -> None:
        self.norm = Norm.parse(norm)
        unknown = sorted(set(members) - set(STANDARD))
        if unknown or not members:
            raise ValueError(f"unknown AutoAttack members {unknown}; choose from {', '.join(STANDARD)}")
        if steps < 1 or targets < 1 or square_queries < 1:
            raise ValueError("steps, targets and square_queries must be >= 1")
        self.steps, self.targets, self.square_queries, self.members = steps, targets, square_queries, tuple(members)

    def member_attacks(self) -> list[tuple[str, Attack]]:
        """The members as attack objects, in running order."""
        make = {
            "apgd_ce": lambda: APGD(norm=self.norm, steps=self.steps, loss="ce"),
            "apgd_t": lambda: APGD(norm=self.norm, steps=self.steps, loss="dlr", targets=self.targets),
            "fab_t": lambda: FAB(norm=self.norm, steps=self.steps, targets=self.targets),
            "square": lambda: Square(norm=self.norm, steps=self.square_queries),
        }
        return [(name, make[name]()) for name in self.members]

    def _run(self, model: nn.Module, x: torch.Tensor, goal: torch.Tensor, eps: float | None, targeted: bool,
             generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        n = x.shape[0]
        with torch.no_grad():
            done = is_adversarial(model(x), goal, targeted)
        broken_by: list[str | None] = [CLEAN if d else None for d in done.tolist()]
        best, queries = x.clone(), torch.ones(n, dtype=torch.long, device=x.device)  # the clean check
        spent: dict[str, list[int]] = {}
        for name, member in self.member_attacks():
            todo = (~done).nonzero().squeeze(1)
            spent[name] = [0] * n
            if todo.numel() == 0:
                continue
            res = member.attack(model, x[todo], goal[todo], eps=eps, targeted=targeted,
                                target_labels=goal[todo] if targeted else None, generator=generator)
            queries[todo] += res.queries
            for i, q in zip(todo.tolist(), res.queries.tolist()):
                spent[name][i] = q
            rows = todo[res.success]
            best[rows], done[rows] = res.adversarial[res.success], True
            for i in rows.tolist():
                broken_by[i] = name
        return best, queries, {"broken_by": broken_by, "member_queries": spent}

    def attack(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, **kwargs) -> AttackResult:
        result = super().attack(model, inputs, labels, **kwargs)
        # the final forward pass decides success; keep the attribution consistent with it
        broken = result.extras.get("broken_by", [])
        result.extras["broken_by"] = [b if ok else None for b, ok in zip(broken, result.success.tolist())]
        return result
