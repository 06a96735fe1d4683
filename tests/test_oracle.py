"""The label-only oracle: query counting, exact budgets, per-budget best adversarials, hooks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medshield.attacks.decision import LabelOracle, model_label_fn
from medshield.attacks.decision.search import start_points
from medshield.types import Norm


def threshold_fn(x: torch.Tensor) -> torch.Tensor:
    """Label 1 where the mean pixel exceeds 0.5, else 0."""
    return (x.flatten(1).mean(dim=1) > 0.5).long()


def make_oracle(budgets: list[int] = [3, 5], n: int = 2) -> LabelOracle:  # noqa: B006
    images = torch.full((n, 1, 2, 2), 0.2)
    return LabelOracle(threshold_fn, images, torch.zeros(n, dtype=torch.long), budgets)


def test_counts_every_query_per_image() -> None:
    oracle = make_oracle()
    idx = torch.tensor([0, 0, 1])
    adv = oracle.query(idx, torch.stack([torch.full((1, 2, 2), 0.9), torch.full((1, 2, 2), 0.1), torch.full((1, 2, 2), 0.9)]))
    assert adv.dtype == torch.bool and adv.tolist() == [True, False, True]
    assert oracle.queries.tolist() == [2, 1]
    assert oracle.batch_calls == 1


def test_never_exceeds_budget_and_over_budget_reads_not_adversarial() -> None:
    oracle = make_oracle(budgets=[2, 4])
    calls = []
    oracle.label_fn = lambda x: (calls.append(x.shape[0]), threshold_fn(x))[1]
    adv = oracle.query(torch.zeros(6, dtype=torch.long), torch.full((6, 1, 2, 2), 0.9))
    assert adv.tolist() == [True] * 4 + [False] * 2
    assert oracle.queries.tolist() == [4, 0] and calls == [4]
    assert oracle.exhausted.tolist() == [True, False]
    assert not oracle.query(torch.tensor([0]), torch.full((1, 1, 2, 2), 0.9)).any()
    assert oracle.queries.tolist() == [4, 0] and calls == [4]


def test_best_per_budget_respects_query_order_within_a_batch() -> None:
    oracle = make_oracle(budgets=[2, 4])
    far, near = torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 0.6)
    oracle.query(torch.zeros(4, dtype=torch.long), torch.stack([torch.full((1, 2, 2), 0.1), far, near, far]))
    x2, d2 = oracle.best(2)
    x4, d4 = oracle.best(4)
    assert d2[0] == pytest.approx(1.6) and d4[0] == pytest.approx(0.8)
    assert torch.equal(x2[0], far) and torch.equal(x4[0], near)
    assert torch.isinf(d2[1]) and torch.isinf(d4[1])
    with pytest.raises(ValueError, match="checkpoint"):
        oracle.best(3)


def test_targeted_and_linf_and_hooks() -> None:
    seen = []
    oracle = LabelOracle(threshold_fn, torch.full((1, 1, 2, 2), 0.2), torch.tensor([0]), [10],
                         targets=torch.tensor([0]), norm="linf", hooks=[lambda i, x: seen.append(i.tolist())])
    assert oracle.query(torch.tensor([0]), torch.full((1, 1, 2, 2), 0.4)).tolist() == [True]
    assert oracle.best(10)[1][0] == pytest.approx(0.2) and oracle.norm == Norm.LINF
    assert seen == [[0]]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="budgets"):
        LabelOracle(threshold_fn, torch.zeros(1, 1, 2, 2), torch.zeros(1, dtype=torch.long), [0])
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        LabelOracle(threshold_fn, torch.zeros(1, 2, 2), torch.zeros(1, dtype=torch.long), [5])


def test_already_misclassified_image_is_done_at_distance_zero() -> None:
    images = torch.tensor([0.2, 0.8]).view(2, 1, 1, 1).expand(2, 1, 2, 2).clone()
    oracle = LabelOracle(threshold_fn, images, torch.tensor([0, 0]), [50])
    _, active = start_points(oracle, torch.Generator().manual_seed(0), None, Norm.L2, 1e-3)
    assert active.tolist() == [True, False]
    assert oracle.best(50)[1][1] == 0 and oracle.queries[1] == 1


def test_model_label_fn_single_and_two_logit() -> None:
    x = torch.rand(5, 3)
    one = nn.Linear(3, 1)
    two = nn.Sequential(one, nn.Flatten(), nn.Linear(1, 2))
    labels = model_label_fn(one, batch_size=2)(x)
    assert labels.dtype == torch.long and labels.tolist() == (one(x).squeeze(1) > 0).long().tolist()
    assert model_label_fn(two)(x).shape == (5,)


def test_fixed_batch_sends_a_local_model_no_chunk_under_8_rows() -> None:
    """A fixed ``batch_size`` skips the throughput sweep but, like the sweep's chunks, never sends a
    deterministic local model a tail under 8 rows (single rows can differ in the last bit)."""
    sizes: list[int] = []
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    net.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[0]))
    x = torch.rand(37, 1, 2, 2)
    labels = model_label_fn(net, batch_size=16)(x)
    assert sizes == [16, 21] and labels.tolist() == net(x).argmax(1).tolist()


def test_adaptive_cost_charges_every_repeat_and_respects_budget() -> None:
    from medshield.attacks.decision.oracle import majority_vote

    calls = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return threshold_fn(x)

    k, budget = 5, 23
    oracle = LabelOracle(majority_vote(fn, k), torch.full((2, 1, 2, 2), 0.2), torch.zeros(2, dtype=torch.long),
                         [10, budget], cost=k)
    adv = oracle.query(torch.tensor([0, 0, 1]), torch.full((3, 1, 2, 2), 0.9))
    assert adv.tolist() == [True] * 3 and oracle.queries.tolist() == [2 * k, k] and calls == [3 * k]
    oracle.query(torch.zeros(10, dtype=torch.long), torch.full((10, 1, 2, 2), 0.9))
    assert oracle.queries.tolist() == [20, k] and oracle.exhausted.tolist() == [True, False]  # 20 + 5 > 23
    assert sum(calls) == 25 == int(oracle.queries.sum())  # model queries == charged queries
    _, d10 = oracle.best(10)
    assert torch.isfinite(d10[0])  # the first logical query (model queries 1-5) is within 10
    with pytest.raises(ValueError, match="cost"):
        LabelOracle(fn, torch.zeros(1, 1, 2, 2), torch.zeros(1, dtype=torch.long), [5], cost=0)


def test_majority_vote_over_noisy_model_flips_less() -> None:
    from medshield.attacks.decision.oracle import majority_vote

    g = torch.Generator().manual_seed(0)

    def noisy(x: torch.Tensor) -> torch.Tensor:  # a fresh noise draw per row, like RND
        return ((x.flatten(1).mean(1) + 0.1 * torch.randn(x.shape[0], generator=g)) > 0.5).long()

    x = torch.full((2000, 1, 2, 2), 0.6)  # true label 1; a single query flips ~16% of the time, 5 votes ~3%
    single = (noisy(x) != 1).float().mean()
    voted = (majority_vote(noisy, 5)(x) != 1).float().mean()
    assert 0.1 < single and voted < single / 3
    assert majority_vote(noisy, 1) is noisy


class _NoParameters(torch.nn.Module):
    """A fixed rule with no parameters or buffers (as a wrapper around a remote service can be)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1, keepdim=True) - 0.5
        return torch.cat([-m, m], 1)


def test_a_model_without_parameters_is_attacked_on_the_cpu() -> None:
    from medshield.attacks.decision.hsja import HopSkipJump
    from medshield.models import model_device, predict

    model = _NoParameters()
    assert model_device(model) == torch.device("cpu")
    x = torch.full((2, 1, 4, 4), 0.3)
    assert predict(model, x).argmax(1).tolist() == [0, 0]
    res = HopSkipJump()(model_label_fn(model), x, torch.tensor([0, 0]), [200], seed=0)
    assert bool(res[200].success.all()) and float(res[200].l2.max()) < 1.0  # exact distance 0.8
