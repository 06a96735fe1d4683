"""Issue 15's label-only attacks (QEBA, CGBA, RayS, surrogate-guided HSJA): contract details the shared
contract test does not cover (already-misclassified inputs, exact query accounting, subspace maths),
efficacy against HSJA on tiny models, and the 128-px check that distances keep falling with the budget."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from medshield.attacks.decision import DECISION_ATTACKS, LabelOracle, model_label_fn, results_by_budget
from medshield.attacks.decision.subspace import dct_matrix, sample_directions, subspace_dim
from medshield.models import predict_labels
from tests.conftest import tiny_model

NEW = ["qeba", "cgba", "rays", "surrogate"]


def two_class_images(model: nn.Module, channels: int = 1, size: int = 28, per_class: int = 2,
                     seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` images of each predicted class (so every image has an adversarial among the others)."""
    x = torch.rand(40, channels, size, size, generator=torch.Generator().manual_seed(seed))
    x = x * torch.linspace(0, 1, 40).view(-1, 1, 1, 1)
    with torch.no_grad():
        labels = predict_labels(model(x))
    keep = torch.cat([torch.nonzero(labels == c).squeeze(1)[:per_class] for c in (0, 1)])
    assert keep.numel() == 2 * per_class
    return x[keep], labels[keep]


def near_copy(model: nn.Module, scale: float = 0.3, seed: int = 9) -> nn.Module:
    """A substitute the attacker might have trained: the target's weights plus relative noise."""
    sub = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sub.parameters():
            p.add_(scale * p.abs().mean() * torch.randn(p.shape, generator=gen))
    return sub


def make(name: str, model: nn.Module, **kw: object) -> object:
    if name == "surrogate":
        kw.setdefault("surrogate", near_copy(model))
    return DECISION_ATTACKS.create(name, **kw)


@pytest.mark.parametrize("name", NEW)
def test_already_misclassified_and_exact_query_count(name: str) -> None:
    model = tiny_model(seed=2)
    x, y = two_class_images(model)
    y = y.clone()
    y[0] = 1 - y[0]  # image 0 is already "misclassified": distance 0 after its first query
    sent = [0]
    base = model_label_fn(model)

    def counted(batch: torch.Tensor) -> torch.Tensor:
        sent[0] += batch.shape[0]
        return base(batch)

    oracle = LabelOracle(counted, x, y, [60, 150], norm=make(name, model).norm)
    make(name, model).run(oracle, torch.Generator().manual_seed(0))
    assert sent[0] == int(oracle.queries.sum()) and (oracle.queries <= 150).all()  # every model query counted
    r = results_by_budget(oracle, 0.0)[150]
    assert r.success[0] and r.l2[0] == 0 and r.linf[0] == 0 and torch.equal(r.adversarial[0], x[0])
    assert int(r.queries[0]) <= (2 if name == "surrogate" else 1)  # the surrogate's transfer check asks once more
    assert torch.isfinite(r.l2[r.success]).all() and not torch.isnan(r.adversarial).any()


def test_subspace_directions() -> None:
    d = dct_matrix(8)
    assert torch.allclose(d @ d.T, torch.eye(8), atol=1e-5)  # orthonormal
    gen = torch.Generator().manual_seed(0)
    u = sample_directions(5, (1, 16, 16), gen, "dct", ratio=4)
    assert u.shape == (5, 1, 16, 16)
    assert torch.allclose(u.flatten(1).norm(dim=1), torch.ones(5), atol=1e-5)
    coeffs = dct_matrix(16) @ u[:, 0] @ dct_matrix(16).T  # back to frequencies: only the 4x4 block is used
    assert coeffs[:, 4:, :].abs().max() < 1e-4 and coeffs[:, :, 4:].abs().max() < 1e-4
    assert subspace_dim((3, 224, 224), "dct", 4) == 3 * 56 * 56 and subspace_dim((1, 28, 28), "full") == 784
    assert subspace_dim((1, 28, 28)) == 14 * 14 and subspace_dim((3, 224, 224)) == 3 * 56 * 56
    def roughness(v: torch.Tensor) -> float:
        return float((v[..., 1:, :] - v[..., :-1, :]).abs().mean())

    full = sample_directions(3, (1, 16, 16), gen, "full")
    assert roughness(sample_directions(3, (1, 16, 16), gen, "resize", ratio=4)) < 0.5 * roughness(full)
    assert roughness(u) < 0.5 * roughness(full)  # low-frequency: smooth
    with pytest.raises(ValueError):
        sample_directions(1, (1, 8, 8), gen, "wavelet")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="surrogate"):
        DECISION_ATTACKS.create("surrogate")
    with pytest.raises(ValueError, match="L2"):
        DECISION_ATTACKS.create("cgba", norm="linf")
    with pytest.raises(ValueError):
        DECISION_ATTACKS.create("cgba", variant="x")
    with pytest.raises(ValueError):
        DECISION_ATTACKS.create("qeba", subspace="full")
    assert str(DECISION_ATTACKS.create("rays", norm="l2").norm) == "linf"  # RayS is L-inf whatever asked


@pytest.fixture(scope="module")
def efficacy_setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = tiny_model(seed=2)
    x, y = two_class_images(model, per_class=4)
    return model, x, y


@pytest.mark.parametrize("name", ["qeba", "cgba", "surrogate"])
def test_l2_attacks_match_or_beat_hsja(name: str, efficacy_setup: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    """At 300 queries on 8 images, the new L2 attacks' median distance is at most HSJA's (+5%): the
    papers' claim (QEBA, CGBA: lower-dimensional estimates; the surrogate: a transfer prior)."""
    model, x, y = efficacy_setup
    fn = model_label_fn(model)
    hsja = DECISION_ATTACKS.create("hsja")(fn, x, y, [300], seed=0)[300]
    new = make(name, model)(fn, x, y, [300], seed=0)[300]
    assert new.success.all() and hsja.success.all()
    assert new.l2.median() <= 1.05 * hsja.l2.median(), (float(new.l2.median()), float(hsja.l2.median()))


def test_rays_beats_hsja_linf(efficacy_setup: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = efficacy_setup
    fn = model_label_fn(model)
    hsja = DECISION_ATTACKS.create("hsja", norm="linf")(fn, x, y, [300], seed=0)[300]
    rays = DECISION_ATTACKS.create("rays")(fn, x, y, [300], seed=0)[300]
    assert rays.success.all()
    assert rays.linf.median() <= 1.05 * hsja.linf.median(), (float(rays.linf.median()), float(hsja.linf.median()))


@pytest.mark.slow  # about 20 s on an idle core
def test_128px_distances_keep_falling() -> None:
    """Issue 15: at 128x128 HSJA's paper tolerance (gamma / d^1.5 = 4.8e-7) left its distances almost
    flat between budgets; with the tolerance floor they keep falling (measured: median 3.69 -> 2.71
    from 500 to 2,000 queries before, 3.34 -> 1.82 after, on 6 such images)."""
    model = tiny_model(seed=2)
    x, y = two_class_images(model, size=128)
    fn = model_label_fn(model)
    budgets = [500, 1000, 2000]
    for name in ("hsja", "cgba"):
        res = DECISION_ATTACKS.create(name)(fn, x, y, budgets, seed=0)
        med = [float(res[b].l2.median()) for b in budgets]
        assert all(res[b].success.all() for b in budgets)
        assert med[1] < med[0] and med[2] < med[1], (name, med)
        assert med[2] < 0.7 * med[0], (name, med)


def test_cli_contract_records(demo_run, demo_run2, tmp_path) -> None:  # noqa: ANN001
    """``medshield blackbox --attack hsja,cgba,qeba,rays`` (and the surrogate) write one record format."""
    from typer.testing import CliRunner

    from medshield.cli import app

    out = tmp_path / "bb"
    args = ["blackbox", "--run", str(demo_run), "--out", str(out), "--budgets", "40,80", "--n-images", "2"]
    res = CliRunner().invoke(app, [*args, "--attack", "hsja,cgba,qeba,rays,surrogate", "--surrogate", str(demo_run2)])
    assert res.exit_code == 0, res.output
    records = json.loads((out / "blackbox.json").read_text())["records"]
    assert {r["attack"] for r in records} == {"hsja", "cgba", "qeba", "rays", "surrogate"}
    keys = {frozenset(r) for r in records}
    assert len(keys) == 1  # the same fields for every attack
    for r in records:
        assert r["success_rate"] > 0 and r["median_l2"] > 0 and r["median_linf"] > 0
        assert r["norm"] == ("linf" if r["attack"] == "rays" else "l2")
    missing = CliRunner().invoke(app, [*args[:3], "--out", str(tmp_path / "x"), "--attack", "surrogate"])
    assert missing.exit_code == 2 and "--surrogate" in missing.output
