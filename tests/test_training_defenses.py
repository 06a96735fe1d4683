from __future__ import annotations

import pytest
import torch

from medshield.defenses.training import TRAINING_DEFENSES, ANTHook, NoiseHook, interleave
from medshield.types import AttackResult


class ShiftAttack:
    """Stub attack: adds +eps to every pixel and records which model it attacked."""

    def __init__(self) -> None:
        self.models: list[torch.nn.Module] = []

    def __call__(self, model, inputs, labels, *, eps, generator=None):  # noqa: ANN001, ANN204
        self.models.append(model)
        adv = (inputs + eps).clamp(0, 1)
        n = inputs.shape[0]
        z = torch.zeros(n)
        return AttackResult(adv, torch.ones(n, dtype=torch.bool), z, z, torch.ones(n, dtype=torch.long), 0.0)


def test_interleave_order() -> None:
    a, b = torch.tensor([1, 2, 3]), torch.tensor([10, 20, 30])
    assert interleave(a, b).tolist() == [1, 10, 2, 20, 3, 30]


def test_at_concatenates_clean_and_adversarial(tiny) -> None:  # noqa: ANN001
    hook = TRAINING_DEFENSES.create("at", attack=ShiftAttack(), eps=0.1)
    x, y = torch.full((4, 1, 28, 28), 0.5), torch.tensor([0, 1, 0, 1])
    bx, by = hook(tiny, x, y, torch.Generator().manual_seed(0))
    assert torch.equal(bx[:4], x) and torch.allclose(bx[4:], x + 0.1)
    assert by.tolist() == [0, 1, 0, 1, 0, 1, 0, 1]


def test_ant_interleaves_and_adds_noise_with_given_moments(tiny) -> None:  # noqa: ANN001
    hook = ANTHook(attack=ShiftAttack(), eps=0.1, mean=0.02, sigma=0.05)
    x, y = torch.full((64, 1, 28, 28), 0.4), torch.arange(64) % 2
    bx, by = hook(tiny, x, y, torch.Generator().manual_seed(0))
    assert by.tolist() == interleave(y, y).tolist()
    originals, adversarials = bx[0::2] - 0.4, bx[1::2] - 0.5
    for part in (originals, adversarials):
        assert float(part.mean()) == pytest.approx(0.02, abs=0.002)
        assert float(part.std()) == pytest.approx(0.05, abs=0.002)


def test_noise_hook_is_seeded() -> None:
    hook = NoiseHook(sigma=0.1)
    x, y = torch.full((8, 1, 28, 28), 0.5), torch.zeros(8, dtype=torch.long)
    a = hook(None, x, y, torch.Generator().manual_seed(3))[0]
    b = hook(None, x, y, torch.Generator().manual_seed(3))[0]
    assert torch.equal(a, b) and float((a - 0.5).std()) == pytest.approx(0.1, abs=0.01)
    assert torch.equal(x, torch.full((8, 1, 28, 28), 0.5))  # input untouched


def test_fixed_source_attacks_frozen_copy(tiny) -> None:  # noqa: ANN001
    from conftest import tiny_model

    attack = ShiftAttack()
    pretrained = tiny_model(seed=1)
    hook = TRAINING_DEFENSES.create("at", attack=attack, eps=0.1, source="fixed", fixed_model=pretrained)
    hook(tiny, torch.rand(2, 1, 28, 28), torch.tensor([0, 1]), torch.Generator())
    attacked = attack.models[-1]
    assert attacked is not tiny and attacked is not pretrained
    assert all(not p.requires_grad for p in attacked.parameters())
    with pytest.raises(ValueError, match="fixed_model"):
        TRAINING_DEFENSES.create("at", attack=attack, eps=0.1, source="fixed")
