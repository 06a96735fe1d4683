"""A shard whose images are all of one class, on a model that labels uniform noise as that class: neither
noise nor the shard's other images is a starting point. The attacker's own images of another class
(the start pool) are: without them the attack reports 'not fooled', a false assurance."""

from __future__ import annotations

import pytest
import torch

from medshield.attacks.decision import DECISION_ATTACKS, model_label_fn
from medshield.data import ImageSet
from medshield.evaluation.blackbox import BlackboxConfig, run_blackbox, start_pool_indices
from tests.conftest import MeanThreshold


def brightness() -> MeanThreshold:
    """Class 1 when the mean pixel is above 0.3 (uniform noise, mean 0.5, is class 1)."""
    return MeanThreshold(threshold=0.3, scale=20.0)


def bright_and_dark(n: int = 6) -> ImageSet:
    g = torch.Generator().manual_seed(0)
    bright = 0.6 + 0.3 * torch.rand(n, 1, 8, 8, generator=g)
    dark = 0.05 * torch.rand(n, 1, 8, 8, generator=g)
    return ImageSet(torch.cat([bright, dark]), torch.tensor([1] * n + [0] * n))


@pytest.mark.parametrize("name", ["hsja", "gbba", "opt"])
def test_one_class_shard_starts_from_the_pool(name: str) -> None:
    data, model = bright_and_dark(), brightness()
    x, y = data.images([0, 1, 2]), data.labels[:3]
    attack = DECISION_ATTACKS.create(name)
    without = attack(model_label_fn(model), x, y, [300], seed=0)[300]
    with_pool = attack(model_label_fn(model), x, y, [300], seed=0, start_pool=data.images([9]))[300]
    assert not without.success.any()
    assert with_pool.success.all() and torch.isfinite(with_pool.l2).all()
    nearest = (x.flatten(1).mean(1) - 0.3) * 8  # L2 to the boundary (mean 0.3) over 64 pixels
    assert (with_pool.l2 >= 0.99 * nearest).all() and (with_pool.l2 <= 2 * nearest).all()  # from the start to near it


def test_pool_interleaves_classes_and_skips_attacked_images() -> None:
    data = bright_and_dark()
    pool = start_pool_indices(data, exclude=[0, 1, 2], seed=0, per_class=3)
    assert len(pool) == 6 and not set(pool) & {0, 1, 2}
    assert [int(data.labels[i]) for i in pool] == [0, 1, 0, 1, 0, 1]
    assert start_pool_indices(data, [0, 1, 2], 0, 3) == pool  # seeded


def test_runner_finds_starts_on_a_one_class_selection(tmp_path) -> None:  # noqa: ANN001
    data = ImageSet(bright_and_dark().data[[0, 1, 2, 3, 9]], torch.tensor([1, 1, 1, 1, 0]))
    cfg = BlackboxConfig(attacks=["hsja"], budgets=[200], n_images=3, n_bootstrap=10, clean_repeats=1, seed=3)
    # seed 3 picks 3 of the 4 bright images: the selection is one class, the pool has the dark one
    res = run_blackbox(brightness(), ImageSet(data.data[:4], data.labels[:4]), tmp_path / "a", cfg)
    assert res["records"][0]["success_rate"] == 0.0  # no image of another class anywhere: nothing to start from
    res = run_blackbox(brightness(), data, tmp_path / "b", cfg)
    assert all(i != 4 for i in res["image_indices"]) and res["records"][0]["success_rate"] == 1.0
