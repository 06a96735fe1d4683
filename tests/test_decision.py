"""Decision-based attacks: contract on tiny models (every registered attack), then efficacy and the
analytic check of HSJA on a linear model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medshield.attacks.decision import DECISION_ATTACKS, model_label_fn
from medshield.attacks.decision.hsja import pcgrad_project
from medshield.models import predict_labels
from medshield.types import AttackResult, Norm
from tests.conftest import tiny_model

BUDGETS = [100, 250, 500]
FAST = {"opt": {"n_directions": 10, "q": 5}, "sign_opt": {"n_directions": 10, "k": 30},  # small, for CI time
        "surrogate": {"surrogate": tiny_model(seed=5)}}


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = tiny_model(seed=2)
    x = torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * torch.linspace(0, 1, 40).view(-1, 1, 1, 1)
    with torch.no_grad():
        labels = predict_labels(model(x))
    # keep 2 of each predicted class, so every image has an adversarial among the others
    keep = torch.cat([torch.nonzero(labels == c).squeeze(1)[:2] for c in (0, 1)])
    assert keep.numel() == 4
    return model, x[keep], labels[keep]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in ("opt", "sign_opt", "boundary") else n
                                  for n in DECISION_ATTACKS.names()])
def test_contract(name: str, setup: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = setup
    x_before = x.clone()
    attack = DECISION_ATTACKS.create(name, **FAST.get(name, {}))
    results = attack(model_label_fn(model), x, y, BUDGETS, seed=3)
    assert torch.equal(x, x_before)

    def dist(r: AttackResult) -> torch.Tensor:
        return r.linf if attack.norm == Norm.LINF else r.l2

    previous = torch.full((x.shape[0],), float("inf"))
    for budget in BUDGETS:
        r = results[budget]
        assert r.adversarial.shape == x.shape and r.adversarial.dtype == torch.float32
        assert r.adversarial.min() >= 0 and r.adversarial.max() <= 1
        assert (r.queries <= budget).all()
        assert (dist(r) <= previous + 1e-6).all(), "the distance must never increase with the budget"
        previous = dist(r)
        with torch.no_grad():
            pred = predict_labels(model(r.adversarial))
        assert (pred[r.success] != y[r.success]).all(), "every reported adversarial is misclassified"
    assert results[BUDGETS[-1]].success.all()
    assert dist(results[BUDGETS[-1]]).median() < dist(results[BUDGETS[0]]).median()
    assert results[BUDGETS[-1]].extras["verify_fixed"] <= 1
    again = DECISION_ATTACKS.create(name, **FAST.get(name, {}))(model_label_fn(model), x, y, BUDGETS, seed=3)
    assert torch.equal(again[BUDGETS[-1]].adversarial, results[BUDGETS[-1]].adversarial)


class Linear(nn.Module):
    """Two logits ``[0, w.x + b]``: the boundary is the hyperplane ``w.x + b = 0``."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w, self.b = nn.Parameter(w), b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1) @ self.w.flatten() + self.b
        return torch.stack([torch.zeros_like(z), z], dim=1)


@pytest.mark.parametrize("name", ["hsja", "gbba"])
def test_hsja_converges_to_hyperplane_distance(name: str) -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(1, 8, 8, generator=gen)
    unit_w = w / w.norm()
    centre = torch.full((1, 8, 8), 0.5)
    target = torch.tensor([0.2, 0.3, 0.25, 0.15])  # distances to the plane w.x = w.centre
    noise = 0.05 * torch.randn(4, 1, 8, 8, generator=gen)
    noise = noise - (noise * unit_w).flatten(1).sum(1).view(-1, 1, 1, 1) * unit_w  # stay at the same distance
    xs = centre - target.view(-1, 1, 1, 1) * unit_w + noise
    model = Linear(w, -float((w * centre).sum()))
    labels = torch.zeros(4, dtype=torch.long)
    analytic = -model(xs)[:, 1].detach() / w.norm()
    assert torch.allclose(analytic, target, atol=1e-5)
    results = DECISION_ATTACKS.create(name)(model_label_fn(model), xs, labels, [500, 3000], seed=0)
    rel = results[3000].l2 / analytic
    assert (rel >= 1 - 1e-4).all() and (rel <= 1.05).all(), rel


def test_first_step_scales_only_the_first_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """``first_step`` shortens the first iteration's step-size search start and leaves the later ones
    (``dist / sqrt(t)``) alone; the default is the paper's full first step."""
    from medshield.attacks.decision.hsja import HopSkipJump

    model, x, y = Linear(torch.ones(1, 4, 4), -8.0), torch.full((2, 1, 4, 4), 0.25), torch.zeros(2, dtype=torch.long)
    starts: dict[float, list[torch.Tensor]] = {}
    for scale in (1.0, 0.25):
        seen = starts.setdefault(scale, [])
        step = HopSkipJump.step

        def record(self, oracle, idx, x0, x_adv, grad, epsilon, theta, step=step, seen=seen):  # noqa: ANN001, ANN202
            seen.append(epsilon / (x_adv - x0).flatten(1).norm(dim=1))
            return step(self, oracle, idx, x0, x_adv, grad, epsilon, theta)

        monkeypatch.setattr(HopSkipJump, "step", record)
        HopSkipJump(first_step=scale)(model_label_fn(model), x, y, [400], seed=0)
        monkeypatch.undo()
    assert torch.allclose(starts[1.0][0], torch.ones(2)) and torch.allclose(starts[0.25][0], torch.full((2,), 0.25))
    assert torch.allclose(starts[0.25][1], torch.full((2,), 2**-0.5)) and torch.allclose(starts[1.0][1], torch.full((2,), 2**-0.5))


def test_targeted_and_linf_hsja() -> None:
    model = tiny_model(num_classes=3, seed=2)
    x = torch.rand(30, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * torch.linspace(0, 1, 30).view(-1, 1, 1, 1)
    with torch.no_grad():
        y = predict_labels(model(x))
    classes = y.unique()
    assert classes.numel() >= 2
    pick = torch.nonzero(y == classes[0]).squeeze(1)[:3]
    starts_src = torch.nonzero(y == classes[1]).squeeze(1)[0]
    targets = torch.full((3,), int(classes[1]))
    starts = x[starts_src].expand(3, -1, -1, -1)
    full_starts = torch.zeros_like(x[pick]) + starts
    res = DECISION_ATTACKS.create("hsja", norm="linf")(model_label_fn(model), x[pick], y[pick], [150, 400],
                                                       targets=targets, starts=full_starts, seed=0)
    with torch.no_grad():
        pred = predict_labels(model(res[400].adversarial))
    assert res[400].success.all() and (pred == targets).all()
    assert (res[400].linf <= res[150].linf + 1e-6).all() and (res[400].linf < 1).all()


def test_pcgrad_projection() -> None:
    d = torch.tensor([[1.0, 0.0]])
    g = torch.tensor([[-1.0, 1.0]]) / 2**0.5
    out = pcgrad_project(g, d)
    assert torch.allclose(out, torch.tensor([[0.0, 1.0]]), atol=1e-6)
    agree = torch.tensor([[1.0, 1.0]]) / 2**0.5
    assert torch.equal(pcgrad_project(agree, d), agree)
    assert torch.equal(pcgrad_project(g, torch.zeros(1, 2)), g)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="L2"):
        DECISION_ATTACKS.create("opt", norm="linf")
    with pytest.raises(ValueError):
        DECISION_ATTACKS.create("hsja", gamma=0)
    with pytest.raises(ValueError, match="first_step"):
        DECISION_ATTACKS.create("hsja", first_step=0)
