"""Efficacy tests for the AutoAttack-grade attacks (APGD, FAB, Square, the ensemble, FMN) and EOT.
The contract tests (shape, bounds, budget, seeds, no mutation) run in test_attacks.py for every
registered attack, these included."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model
from test_attacks import _fit_tiny
from torch import nn

from medshield.attacks import APGD, FAB, FMN, AutoAttack, CarliniWagnerL2, ExpectationModel, Square, pgd
from medshield.attacks.apgd import checkpoints
from medshield.attacks.fab import hyperplane_step
from medshield.attacks.geometry import norms
from medshield.attacks.losses import attack_objective
from medshield.defenses.inference import RND
from medshield.evaluation.checks import check_randomised
from medshield.evaluation.whitebox import WhiteboxJob, run_whitebox, worst_case
from medshield.models import BoundedModel, predict_labels
from medshield.types import Norm


@pytest.fixture(scope="module")
def fitted():
    return _fit_tiny()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class OneLogit(nn.Module):
    """The same classifier as a two-logit model, as one sigmoid logit ``z1 - z0``."""

    def __init__(self, two: nn.Module) -> None:
        super().__init__()
        self.two, self.bounds, self.num_classes = two, (0.0, 1.0), 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.two(x)
        return z[:, 1:] - z[:, :1]


def test_apgd_checkpoints_follow_the_paper() -> None:
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]  # p = 0.22, 0.41, 0.57, ... (ceil)
    assert checkpoints(1) == [1]


@pytest.mark.parametrize("norm", list(Norm))
def test_apgd_at_least_as_strong_as_pgd(fitted, norm: Norm) -> None:
    model, x, y = fitted
    for eps in ({Norm.LINF: (1 / 255, 3 / 255), Norm.L2: (0.1, 0.3)}[norm]):
        p = pgd(norm=norm, steps=20).attack(model, x, y, eps=eps, generator=gen())
        a = APGD(norm=norm, steps=20).attack(model, x, y, eps=eps, generator=gen())
        assert a.success.sum() >= p.success.sum()
    assert a.success_rate > 0.2


def test_dlr_is_the_margin_for_two_classes_and_scale_free_for_more() -> None:
    z = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    y = torch.tensor([0, 0])
    assert torch.allclose(attack_objective("dlr", z, y), attack_objective("margin", z, y))
    assert torch.allclose(attack_objective("margin", z, y), torch.tensor([-3.0, 2.5]))
    z3 = torch.tensor([[2.0, -1.0, 0.5], [0.5, 3.0, 1.0]])
    y3 = torch.tensor([0, 1])
    assert torch.allclose(attack_objective("dlr", z3, y3), attack_objective("dlr", 7 * z3 + 3, y3), atol=1e-6)
    one = torch.tensor([[-3.0], [2.5]])  # one-logit model: [0, z] two-column form
    assert torch.allclose(attack_objective("dlr", one, y), attack_objective("margin", torch.tensor([[0, -3.0], [0, 2.5]]), y))


@pytest.mark.parametrize("name", ["apgd_t", "fab", "autoattack"])
def test_one_logit_model_is_attacked_like_its_two_logit_twin(fitted, name: str) -> None:
    model, x, y = fitted
    make = {"apgd_t": lambda: APGD(steps=10, loss="dlr", targets=9),
            "fab": lambda: FAB(steps=10), "autoattack": lambda: AutoAttack(steps=10, square_queries=50)}[name]
    eps = 2 / 255
    two = make().attack(model, x, y, eps=eps, generator=gen())
    one = make().attack(OneLogit(model), x, y, eps=eps, generator=gen())
    assert abs(int(two.success.sum()) - int(one.success.sum())) <= 1
    assert two.success_rate > 0.1


def test_autoattack_reports_worst_case_and_who_broke_each_image(fitted) -> None:
    model, x, y = fitted
    eps = 2 / 255
    aa = AutoAttack(steps=20, square_queries=200).attack(model, x, y, eps=eps, generator=gen())
    ce = APGD(steps=20).attack(model, x, y, eps=eps, generator=gen())
    assert aa.success.sum() >= ce.success.sum()
    broken = aa.extras["broken_by"]
    assert len(broken) == x.shape[0]
    assert [b is not None for b in broken] == aa.success.tolist()
    assert set(broken) <= {None, "clean", "apgd_ce", "apgd_t", "fab_t", "square"}
    wrong = predict_labels(model(x)) != y
    assert all(b == "clean" for b, w in zip(broken, wrong.tolist()) if w)
    assert "apgd_ce" in broken
    assert set(aa.extras["member_queries"]) == {"apgd_ce", "apgd_t", "fab_t", "square"}


def test_square_counts_queries_and_stops_on_success(fitted) -> None:
    model, x, y = fitted
    res = Square(steps=300).attack(model, x, y, eps=8 / 255, generator=gen())
    assert res.success_rate > 0.5
    assert int(res.queries.max()) <= 300
    assert float(res.queries[res.success].float().mean()) < 300  # stopped early where it succeeded
    assert bool((res.queries[~res.success] == 300).all())
    l2 = Square(norm="l2", steps=300).attack(model, x, y, eps=1.0, generator=gen())
    assert l2.success_rate > 0.3 and float(l2.l2.max()) <= 1.0 + 1e-6


@pytest.mark.parametrize("norm", list(Norm))
def test_hyperplane_step_is_the_minimal_norm_solution(norm: Norm) -> None:
    g = gen(1)
    p = torch.full((3, 1, 4, 4), 0.5)
    w = torch.randn(3, 1, 4, 4, generator=g)
    c = torch.tensor([0.05, -0.02, 0.0])
    d = hyperplane_step(p, w, c, (0.0, 1.0), norm)
    assert torch.allclose((w * d).flatten(1).sum(1), c, atol=1e-5)
    wf = w.flatten(1)
    closed = c / (wf.abs().sum(1) if norm is Norm.LINF else wf.pow(2).sum(1))  # box inactive
    want = closed[:, None] * (wf.sign() if norm is Norm.LINF else wf)
    assert torch.allclose(norms(d, norm), norms(want, norm), atol=1e-5)


@pytest.mark.parametrize("norm", list(Norm))
def test_fmn_finds_minimal_distances(fitted, norm: Norm) -> None:
    model, x, y = fitted
    fmn = FMN(norm=norm, steps=60)
    res = fmn.attack(model, x, y, eps=None)
    assert res.success_rate > 0.95
    dist = (res.l2 if norm is Norm.L2 else res.linf)
    # at eps = FMN's own distance, the image is adversarial
    again = fmn.finalize(model, x, y, res.adversarial, float(dist.max()) + 1e-6, False, res.queries)
    assert torch.equal(again.success, res.success)
    # and the distances are close to minimal: no larger than FAB's, and than C&W's for L2
    fab = FAB(norm=norm, steps=60).attack(model, x, y, eps=None)
    ok = res.success & fab.success
    assert float(dist[ok].median()) <= 1.05 * float((fab.l2 if norm is Norm.L2 else fab.linf)[ok].median())
    short = FMN(norm=norm, steps=10).attack(model, x, y, eps=None)
    ok = res.success & short.success
    assert float(dist[ok].median()) < float((short.l2 if norm is Norm.L2 else short.linf)[ok].median())
    if norm is Norm.L2:
        cw = CarliniWagnerL2(steps=50, binary_search_steps=4).attack(model, x, y, eps=None)
        ok = res.success & cw.success
        assert float(dist[ok].median()) <= 1.05 * float(cw.l2[ok].median())


class Wiggly(nn.Module):
    """A one-logit toy whose input gradient is dominated by a fast oscillation along ``v``: under input
    noise (RND) the oscillation's gradient is random, while its expectation over the noise is small,
    so single-draw gradients point nowhere and EOT recovers the real direction ``w``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        g = gen(7)
        self.register_buffer("w", torch.randn(dim, generator=g))
        self.register_buffer("v", torch.randn(dim, generator=g))
        self.bounds, self.num_classes = (0.0, 1.0), 1
        self.anchor = nn.Parameter(torch.zeros(1), requires_grad=False)  # for next(model.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = (x.flatten(1) - 0.5)
        return (f @ self.w + 0.02 * torch.sin(400 * (f @ self.v)))[:, None] * 4


def test_eot_beats_plain_pgd_against_rnd() -> None:
    toy = Wiggly(64)
    x = torch.rand(200, 1, 8, 8, generator=gen(3)) * 0.5 + 0.25
    y = (((x.flatten(1) - 0.5) @ toy.w) > 0).long()
    rnd = RND(toy, nu=0.05, seed=0)
    assert not check_randomised(rnd, x[:8])["ok"] and check_randomised(toy, x[:8])["ok"]
    judge = lambda adv: float((predict_labels(RND(toy, nu=0.05, seed=9)(adv)) == y).float().mean())  # noqa: E731
    eps = 0.03
    plain = pgd(steps=10).attack(rnd, x, y, eps=eps, generator=gen())
    eot = pgd(steps=10).attack(ExpectationModel(rnd, 16), x, y, eps=eps, generator=gen())
    assert judge(eot.adversarial) + 0.15 < judge(plain.adversarial), (judge(eot.adversarial), judge(plain.adversarial))


def test_whitebox_runner_detects_randomised_models_and_uses_eot(fitted) -> None:
    model, x, y = fitted
    job = WhiteboxJob(attacks=["pgd", "apgd"], eps=[2 / 255], attack_kwargs={"pgd": {"steps": 3}, "apgd": {"steps": 3}},
                      eot_samples=4)
    plain = run_whitebox(model, x[:16], y[:16], job)
    noisy = run_whitebox(RND(model, nu=0.02, seed=0), x[:16], y[:16], job)
    assert [r["randomized_model"] for r in plain] == [False, False] and plain[0]["eot_samples"] == 1
    assert [r["randomized_model"] for r in noisy] == [True, True] and noisy[0]["eot_samples"] == 4
    assert noisy[0]["queries_per_image"] == 4 * plain[0]["queries_per_image"]
    assert not noisy[0]["checks"]["randomised_model"]["ok"]


def test_worst_case_is_per_image_over_attacks(fitted) -> None:
    model, x, y = fitted
    job = WhiteboxJob(attacks=["fgsm", "apgd", "fmn"], eps=[1 / 255, 4 / 255],
                      attack_kwargs={"apgd": {"steps": 10}, "fmn": {"steps": 20}})
    recs = run_whitebox(model, x, y, job)
    fmn = next(r for r in recs if r["attack"] == "fmn")
    assert len(fmn["min_distance_per_image"]) == x.shape[0] and fmn["distance_norm"] == "linf"
    worst = worst_case(recs)
    assert len(worst) == 2
    for w in worst:
        per = [r for r in recs if r["eps"] == w["eps"]]
        assert w["robust_accuracy"] <= min(r["robust_accuracy"] for r in per) + 1e-12
        assert w["strongest_robust_accuracy"] == min(r["robust_accuracy"] for r in per)
        assert w["attacks_run"] == ["fgsm", "apgd", "fmn"]
    # synthetic: two attacks breaking different images -> worst case below both
    a = {"run": "m", "norm": "linf", "eps": 0.1, "attack": "a", "clean_accuracy": 1.0, "robust_accuracy": 0.5,
         "robust_per_image": [1, 1, 0, 0]}
    b = {**a, "attack": "b", "robust_accuracy": 0.5, "robust_per_image": [0, 1, 1, 0]}
    (w,) = worst_case([a, b])
    assert w["robust_accuracy"] == 0.25 and w["strongest_attack"] == "a"


def test_bad_hyperparameters_raise() -> None:
    for make in (lambda: APGD(loss="hinge"), lambda: APGD(steps=0), lambda: FAB(eta=0.5), lambda: Square(p_init=2),
                 lambda: FMN(gamma_init=0.0), lambda: AutoAttack(members=("pgd",)), lambda: ExpectationModel(tiny_model(), 0)):
        with pytest.raises(ValueError):
            make()


def test_one_logit_bounded_model_runs_every_new_attack() -> None:
    model = tiny_model(num_classes=1)
    assert isinstance(model, BoundedModel)
    x = torch.rand(4, 1, 28, 28, generator=gen(2))
    y = torch.tensor([0, 1, 0, 1])
    for attack in (APGD(steps=3, targets=9), FAB(steps=3), Square(steps=5), FMN(steps=5), AutoAttack(steps=3, square_queries=5)):
        res = attack.attack(model, x, y, eps=4 / 255, generator=gen())
        assert float(res.linf.max()) <= 4 / 255 + 1e-6
