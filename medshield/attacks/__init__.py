"""Attacks: one registry, fixed-epsilon gradient attacks and minimisation attacks.

``ATTACKS.create("pgd", steps=20)`` builds an attack; every attack is called as
``attack.attack(model, images, labels, eps=..., targeted=False, target_labels=None, generator=None)``
and returns an :class:`~medshield.types.AttackResult`.
"""

from medshield.attacks.apgd import APGD, apgd_ce, apgd_dlr, apgd_t
from medshield.attacks.base import Attack, FixedEpsilonAttack, MinimizationAttack, attack_loss, input_gradient, is_adversarial
from medshield.attacks.cw import CarliniWagnerL2
from medshield.attacks.ensemble import AutoAttack
from medshield.attacks.eot import ExpectationModel
from medshield.attacks.fab import FAB
from medshield.attacks.fmn import FMN
from medshield.attacks.gradient import GradientAttack, IterativeFGSM, bim, fgsm, mifgsm, pgd
from medshield.attacks.square import Square
from medshield.registry import Registry

ATTACKS: Registry[Attack] = Registry("attack")
ATTACKS.register("fgsm")(fgsm)
ATTACKS.register("fgsm_iter")(IterativeFGSM)
ATTACKS.register("bim")(bim)
ATTACKS.register("pgd")(pgd)
ATTACKS.register("mifgsm")(mifgsm)
ATTACKS.register("cw")(CarliniWagnerL2)
ATTACKS.register("apgd")(apgd_ce)
ATTACKS.register("apgd_dlr")(apgd_dlr)
ATTACKS.register("apgd_t")(apgd_t)
ATTACKS.register("fab")(FAB)
ATTACKS.register("square")(Square)
ATTACKS.register("autoattack")(AutoAttack)
ATTACKS.register("fmn")(FMN)


def create_attack(name: str, **kwargs: object) -> Attack:
    """``create_attack("pgd", norm="l2", steps=20)``; ``None`` kwargs keep the attack's defaults.
    ``norm`` is ignored for attacks with a fixed norm (C&W is L2)."""
    factory = ATTACKS.get(name)
    if factory is CarliniWagnerL2:
        kwargs.pop("norm", None)
    return ATTACKS.create(name, **kwargs)


__all__ = [
    "APGD", "ATTACKS", "Attack", "AutoAttack", "CarliniWagnerL2", "ExpectationModel", "FAB", "FMN", "Square", "FixedEpsilonAttack", "GradientAttack", "IterativeFGSM",
    "MinimizationAttack", "attack_loss", "bim", "create_attack", "fgsm", "input_gradient", "is_adversarial",
    "mifgsm", "pgd", "apgd_ce", "apgd_dlr", "apgd_t",
]
