"""Contract tests for every registered attack, then efficacy and peer cross-checks."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import tiny_model

from medshield.attacks import ATTACKS, CarliniWagnerL2, GradientAttack, create_attack, pgd
from medshield.attacks.geometry import norms, project, random_start
from medshield.models import predict_labels
from medshield.types import Norm

FAST = {"cw": {"steps": 15, "binary_search_steps": 2}, "pgd": {"steps": 3, "restarts": 2},
        "bim": {"steps": 3}, "mifgsm": {"steps": 3}, "fgsm_iter": {"steps": 4}, "apgd": {"steps": 5},
        "apgd_dlr": {"steps": 5}, "apgd_t": {"steps": 5}, "fab": {"steps": 5}, "square": {"steps": 20},
        "autoattack": {"steps": 4, "square_queries": 10}, "fmn": {"steps": 10}}
EPS = {Norm.LINF: 4 / 255, Norm.L2: 0.5}
CASES = [(name, norm, n_logits, targeted) for name in ATTACKS.names() for norm in Norm for n_logits in (1, 2)
         for targeted in (False, True) if not (name == "cw" and norm is Norm.L2 and n_logits == 1 and targeted)]


def make(name: str, norm: Norm):
    return create_attack(name, norm=norm, **FAST.get(name, {}))


@pytest.mark.parametrize(("name", "norm", "n_logits", "targeted"), CASES)
def test_attack_contract(name: str, norm: Norm, n_logits: int, targeted: bool) -> None:
    model = tiny_model(num_classes=n_logits)
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    x0, y0 = x.clone(), y.clone()
    eps = EPS[norm if name != "cw" else Norm.L2]
    attack = make(name, norm)
    kw = {"eps": eps, "targeted": targeted, "target_labels": 1 - y if targeted else None}
    model.train()
    res = attack.attack(model, x, y, generator=torch.Generator().manual_seed(3), **kw)
    assert model.training, "the model's mode must be restored"
    assert torch.equal(x, x0) and torch.equal(y, y0), "inputs must not be mutated"
    adv = res.adversarial
    assert adv.shape == x.shape and adv.dtype == x.dtype and not adv.requires_grad
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    size = norms(adv - x, attack.norm)
    assert float(size.max()) <= eps + 1e-6
    assert torch.allclose(res.linf, norms(adv - x, Norm.LINF)) and torch.allclose(res.l2, norms(adv - x, Norm.L2))
    assert res.success.dtype == torch.bool and res.success.shape == (6,)
    assert res.queries.dtype == torch.long and bool((res.queries >= 1).all()) and res.seconds > 0
    pred = predict_labels(res.logits)
    assert torch.equal(res.success, pred == (1 - y) if targeted else pred != y)
    again = attack.attack(model.eval(), x, y, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(again.adversarial, adv), "same seed must give the same result"


def test_unknown_attack_suggests_name() -> None:
    with pytest.raises(Exception, match="did you mean 'pgd'"):
        create_attack("pdg")


@pytest.mark.parametrize("bad", [{"steps": 0}, {"rel_stepsize": -1.0}, {"momentum": -0.5}])
def test_bad_hyperparameters_raise(bad: dict) -> None:
    with pytest.raises(ValueError):
        GradientAttack(**bad)


def test_bad_call_arguments_raise(tiny, images) -> None:
    y = torch.zeros(8, dtype=torch.long)
    with pytest.raises(ValueError, match="fixed-epsilon"):
        pgd().attack(tiny, images, y, eps=None)
    with pytest.raises(ValueError, match="target_labels"):
        pgd().attack(tiny, images, y, eps=0.1, targeted=True)
    with pytest.raises(ValueError, match="rows"):
        pgd().attack(tiny, images, y[:3], eps=0.1)


@pytest.mark.parametrize("norm", list(Norm))
def test_geometry_projection_and_random_start(norm: Norm) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 8, 8, generator=g)
    start = random_start(x, 0.3, norm, g)
    assert float(norms(start, norm).max()) <= 0.3 + 1e-6 and float(norms(start, norm).min()) > 0
    big = torch.randn(5, 1, 8, 8, generator=g) * 10
    assert torch.allclose(norms(project(big, 0.3, norm), norm), torch.full((5,), 0.3), atol=1e-5)


def test_zero_eps_changes_nothing(tiny, images) -> None:
    res = pgd().attack(tiny, images, torch.zeros(8, dtype=torch.long), eps=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(res.adversarial, images)


def _fit_tiny(seed: int = 0):
    """A tiny model trained for a few steps on the demo phantoms (so accuracy is meaningful)."""
    from medshield.data import load_demo

    ds = load_demo(size=28, seed=0)
    x, y = ds.train.get(torch.arange(400))
    model = tiny_model(num_classes=2, seed=seed).train()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    xt, yt = ds.test.get(torch.arange(64))
    return model.eval(), xt, yt


@pytest.fixture(scope="module")
def fitted():
    return _fit_tiny()


def test_efficacy_accuracy_falls_and_targeted_success_rises(fitted) -> None:
    model, x, y = fitted
    clean = (predict_labels(model(x)) == y).float().mean()
    assert clean > 0.8
    gen = torch.Generator().manual_seed(0)
    weak = pgd(steps=10).attack(model, x, y, eps=1 / 255, generator=gen).success_rate
    strong = pgd(steps=10).attack(model, x, y, eps=16 / 255, generator=gen).success_rate
    assert strong > weak and strong > 0.9
    tgt = pgd(steps=10).attack(model, x, y, eps=16 / 255, targeted=True, target_labels=1 - y, generator=gen)
    assert tgt.success_rate > 0.9


@pytest.mark.slow
def test_cw_smaller_l2_than_pgd_l2_at_equal_success(fitted) -> None:
    model, x, y = fitted
    cw = CarliniWagnerL2(steps=100, binary_search_steps=6).attack(model, x, y, eps=None)
    mask = cw.success
    assert cw.success_rate > 0.9
    # PGD-L2 with a budget just large enough to match C&W's success rate
    for eps in (0.25, 0.5, 1.0, 2.0, 4.0):
        p = pgd(norm="l2", steps=20).attack(model, x, y, eps=eps, generator=torch.Generator().manual_seed(0))
        if p.success_rate >= cw.success_rate:
            break
    both = mask & p.success
    assert float(cw.l2[both].mean()) < float(p.l2[both].mean())


# ---- cross-check against foolbox 3.3.4 (test-only dependency) ----
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


@pytest.mark.parametrize("eps", [2 / 255, 8 / 255])
def test_fgsm_and_pgd_match_foolbox(fitted, eps: float) -> None:
    fb = pytest.importorskip("foolbox")
    model, x, y = fitted
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    ours_f = create_attack("fgsm").attack(model, x, y, eps=eps)
    _, _, fb_f = fb.attacks.FGSM()(fmodel, x, y, epsilons=eps)
    assert abs(ours_f.success.float().mean() - fb_f.float().mean()) <= 0.01 + 1e-9
    # no random start: foolbox draws it from torch's global RNG, so it would depend on test order
    ours_p = pgd(steps=40, rel_stepsize=0.01 / 0.3, random_start=False).attack(model, x, y, eps=eps)
    _, _, fb_p = fb.attacks.LinfPGD(steps=40, random_start=False)(fmodel, x, y, epsilons=eps)
    assert abs(ours_p.success.float().mean() - fb_p.float().mean()) <= 0.01 + 1e-9


def test_one_protocol_keyword_only_frozen_result_with_logits() -> None:
    """Hyperparameters are keyword-only, the call is the entry point, the result is frozen and typed."""
    import dataclasses

    from medshield.attacks.decision import DECISION_ATTACKS

    with pytest.raises(TypeError):
        GradientAttack("linf", 5)  # type: ignore[misc]
    for name in ATTACKS.names():
        with pytest.raises(TypeError):
            ATTACKS.get(name)("linf")
    for name in DECISION_ATTACKS.names():
        with pytest.raises(TypeError):
            DECISION_ATTACKS.get(name)("l2")
    model = tiny_model(num_classes=2)
    x, y = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 0, 1])
    res = pgd(steps=2)(model, x, y, eps=2 / 255, generator=torch.Generator().manual_seed(0))
    assert res.logits is not None and res.logits.shape[0] == 4 and "logits" not in res.extras
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.seconds = 0.0  # type: ignore[misc]


def test_one_geometry_module() -> None:
    """Every attack measures and moves with :mod:`medshield.attacks.geometry`."""
    from medshield.attacks import geometry
    from medshield.attacks.decision import base, hsja, oracle, search

    assert oracle.distance is geometry.distance is hsja.distance is base.distance
    assert search.blend is geometry.blend and hsja.unit is geometry.unit
    a, b = torch.rand(3, 1, 4, 4), torch.rand(3, 1, 4, 4)
    assert torch.allclose(geometry.distance(a, b, Norm.L2), (a - b).flatten(1).norm(dim=1))
    assert torch.allclose(geometry.step_direction(a, Norm.L2), geometry.unit(a))
