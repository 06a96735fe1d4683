from __future__ import annotations

import pytest
import torch

from medshield.defenses.detection import StreamDetector
from medshield.defenses.inference import DND, INFERENCE_DEFENSES, RND, DefenseSpec
from tests.conftest import MeanThreshold


class Identity(torch.nn.Module):
    """Returns the mean pixel as a single logit, so the wrapper's noise is observable."""

    num_classes = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).mean(1, keepdim=True)


class Echo(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def test_rnd_noise_statistics_and_seed() -> None:
    wrapped = RND(Echo(), nu=0.05, seed=1)
    x = torch.full((50, 1, 28, 28), 0.5)
    out = wrapped(x) - 0.5
    assert float(out.mean()) == pytest.approx(0.0, abs=0.002)
    assert float(out.std()) == pytest.approx(0.05, abs=0.002)
    again = RND(Echo(), nu=0.05, seed=1)
    assert torch.equal(again(x) - 0.5, out)
    assert not torch.equal(wrapped(x) - 0.5, out)  # fresh noise on every query
    wrapped.reset()
    assert torch.equal(wrapped(x) - 0.5, out)


def test_dnd_noise_on_input_and_scores() -> None:
    x = torch.full((20000, 1, 2, 2), 0.5)
    only_scores = DND(Identity(), m=0.0, n=0.3, seed=0)(x)
    assert only_scores.shape == (20000, 2)
    assert float(only_scores[:, 0].std()) == pytest.approx(0.3, rel=0.03)
    assert float((only_scores[:, 1] - 0.5).std()) == pytest.approx(0.3, rel=0.03)
    only_input = DND(Identity(), m=0.2, n=0.0, seed=0)(x)
    assert torch.equal(only_input[:, 0], torch.zeros(20000))
    assert float(only_input[:, 1].std()) == pytest.approx(0.2 / 2, rel=0.05)  # mean of 4 noisy pixels


def test_registry_and_none(tiny) -> None:  # noqa: ANN001
    assert DefenseSpec.parse("none").build(tiny) is tiny
    assert isinstance(INFERENCE_DEFENSES.create("rnd", model=tiny, nu=0.01), RND)
    with pytest.raises(ValueError):
        DND(tiny, m=-1)


def test_detector_flags_near_duplicates_not_benign() -> None:
    g = torch.Generator().manual_seed(0)
    benign = torch.rand(400, 1, 28, 28, generator=g)
    detector = StreamDetector(k=5).calibrate(benign, fpr=0.001)
    base = torch.rand(1, 1, 28, 28, generator=g)
    attack = (base + 0.01 * torch.randn(200, 1, 28, 28, generator=g)).clamp(0, 1)
    v = detector.observe("attacker", attack[:100])
    v = detector.observe("attacker", attack[100:])
    assert v.flagged and v.flagged_at is not None and v.flagged_at <= 10 and v.queries_seen == 200
    fresh = torch.rand(300, 1, 28, 28, generator=g)
    ok = detector.observe("benign", fresh)
    assert not ok.flagged and ok.suspicious <= 3


def test_detector_batch_equals_one_by_one() -> None:
    g = torch.Generator().manual_seed(1)
    stream = torch.rand(40, 1, 28, 28, generator=g) * 0.1
    a, b = StreamDetector(k=3, threshold=0.05, history=16), StreamDetector(k=3, threshold=0.05, history=16)
    va = a.observe("c", stream)
    for i in range(40):
        vb = b.observe("c", stream[i : i + 1])
    assert (va.suspicious, va.flagged_at) == (vb.suspicious, vb.flagged_at)


def test_blackbox_defense_registry(tiny) -> None:  # noqa: ANN001
    assert INFERENCE_DEFENSES.create("none", model=tiny) is tiny
    assert isinstance(INFERENCE_DEFENSES.create("rnd", model=tiny, seed=1), RND)
    dnd = INFERENCE_DEFENSES.create("dnd", model=tiny, seed=1, m=0.0, n=0.1)
    assert isinstance(dnd, DND) and dnd.n == 0.1
    # one set of defaults: the spec, the registry and the class agree (dnd m = 0.01 everywhere)
    built = DefenseSpec.parse("dnd").build(tiny)
    assert (built.m, built.n) == (0.01, 0.5) == (DND(tiny).m, DND(tiny).n)


def test_adaptive_majority_vote_beats_rnd_noise_with_fresh_draws() -> None:
    from medshield.attacks.decision import LabelOracle, model_label_fn
    from medshield.attacks.decision.oracle import majority_vote

    x = torch.full((1000, 1, 2, 2), 0.55)  # true label 1; mean noise std 0.05 -> ~16% single-query flips
    single = model_label_fn(RND(MeanThreshold(), nu=0.1, seed=0))
    voted = majority_vote(model_label_fn(RND(MeanThreshold(), nu=0.1, seed=0)), 5)
    flips_single, flips_voted = float((single(x) != 1).float().mean()), float((voted(x) != 1).float().mean())
    assert 0.1 < flips_single and flips_voted < flips_single / 3  # repeats see independent noise
    oracle = LabelOracle(voted, x[:3], torch.zeros(3, dtype=torch.long), [20], cost=5)
    for _ in range(6):
        oracle.query(torch.arange(3), x[:3])
    assert oracle.queries.tolist() == [20, 20, 20] and oracle.exhausted.all()
