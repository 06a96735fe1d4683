"""Fast inference: the measured forward batch size never changes a label or an attack's result, and the
optional inference paths keep labels identical on the real PneumoniaMNIST test set."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch

from medshield.attacks.decision import model_label_fn
from medshield.attacks.decision.hsja import HopSkipJump
from medshield.defenses.inference import RND
from medshield.models import create_model
from medshield.models.inference import (MIN_CHUNK, InferencePath, best_batch_size, checked_inference_path,
                                        chunks, forward_rates, inference_path, is_stochastic, labels_agree)
from tests.conftest import tiny_model


def test_chunks_never_send_a_short_tail() -> None:
    x = torch.arange(70).view(70, 1)
    sizes = [c.shape[0] for c in chunks(x, 32)]
    assert sizes == [32, 38] and torch.equal(torch.cat(list(chunks(x, 32))), x)
    assert [c.shape[0] for c in chunks(x[:5], 64)] == [5]
    assert [c.shape[0] for c in chunks(x[:64], 8)] == [8] * 8
    assert all(c.shape[0] >= MIN_CHUNK for c in chunks(x, 8))


def test_sweep_is_cached_and_leaves_the_global_rng_alone() -> None:
    model = tiny_model(seed=1)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    size = best_batch_size(model, (1, 28, 28))
    assert torch.equal(torch.rand(3), expected)
    assert size in (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
    assert best_batch_size(model, (1, 28, 28)) == size  # cached
    rates = forward_rates(model, (1, 8, 8), sizes=(8, 16), min_seconds=0.001)
    assert set(rates) <= {8, 16} and all(r > 0 for r in rates.values())


def test_auto_batch_gives_the_labels_and_attack_of_one_big_batch() -> None:
    """Same seed: HSJA through the swept chunking ends with exactly the adversarials of 4096-row calls
    (layout pinned: channels-last logits may differ from contiguous ones in the last bit)."""
    model = tiny_model(seed=2)
    x = torch.rand(300, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * torch.linspace(0, 1, 300).view(-1, 1, 1, 1)
    auto, big = model_label_fn(model, layout="contiguous"), model_label_fn(model, 4096)
    y = big(x)
    assert torch.equal(auto(x), y) and not auto(x).is_inference()
    keep = torch.cat([torch.nonzero(y == c).squeeze(1)[:3] for c in (0, 1)])
    runs = [HopSkipJump()(fn, x[keep], y[keep], [200, 600], seed=5) for fn in (auto, big)]
    for budget in (200, 600):
        assert torch.equal(runs[0][budget].adversarial, runs[1][budget].adversarial)
        assert torch.equal(runs[0][budget].queries, runs[1][budget].queries)


def test_randomised_defense_keeps_its_fixed_batch() -> None:
    defended = RND(tiny_model(), nu=0.05, seed=0)
    assert is_stochastic(defended) and not is_stochastic(tiny_model())
    x = torch.rand(20, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    a = model_label_fn(defended)(x)
    defended.generator.manual_seed(0)
    assert torch.equal(a, model_label_fn(defended, 4096)(x))


def test_inference_path_spec_is_checked() -> None:
    model = tiny_model()
    assert inference_path(model, "default") is model
    assert isinstance(inference_path(model, "channels_last+bf16"), InferencePath)
    with pytest.raises(ValueError):
        inference_path(model, "fp8")
    with pytest.raises(ValueError):
        inference_path(model, "bf16+fp16")


@pytest.fixture(scope="module")
def pneumonia(shared_data: Path) -> tuple[torch.nn.Module, torch.Tensor]:
    """SmallCNN trained for 2 epochs on 800 PneumoniaMNIST images (400 per class), and the 624 test images."""
    d = np.load(shared_data / "pneumoniamnist.npz")
    all_y = torch.from_numpy(d["train_labels"]).long().flatten()
    pick = torch.cat([torch.nonzero(all_y == c).squeeze(1)[:400] for c in (0, 1)])
    x = torch.from_numpy(d["train_images"][pick.numpy()]).float().div(255).unsqueeze(1)
    y = all_y[pick]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_model(name="smallcnn", in_channels=1, num_classes=2, image_size=28)
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        model.train()
        for _ in range(2):
            for idx in torch.randperm(len(x)).split(32):
                loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    model.eval()
    test = torch.from_numpy(d["test_images"]).float().div(255).unsqueeze(1)
    return model, test


@pytest.mark.parametrize("spec", ["channels_last", pytest.param("bf16", marks=pytest.mark.slow),
                                  pytest.param("compile", marks=pytest.mark.slow)])
def test_paths_keep_test_set_labels(pneumonia: tuple[torch.nn.Module, torch.Tensor], spec: str) -> None:
    model, test = pneumonia
    reference = model_label_fn(model, 256)
    labels = reference(test)
    assert 0.2 < labels.float().mean() < 0.9  # a trained model: both classes predicted
    agree = labels_agree(reference, model_label_fn(inference_path(model, spec), 256), test)
    if spec == "bf16":  # lower precision moves the boundary: the checked path refuses it where labels change
        with pytest.warns(UserWarning) if agree < 1 else nullcontext():
            checked = checked_inference_path(model, spec, test)
        assert (checked is model) == (agree < 1)
    else:
        assert agree == 1.0
        assert isinstance(checked_inference_path(model, spec, test), InferencePath)


def test_a_remote_model_is_never_swept_for_its_batch_size() -> None:
    """A module that answers over the network gets exactly the rows asked for: no throughput probes."""
    import torch
    from torch import nn

    from medshield.attacks.decision import model_label_fn

    class Remote(nn.Module):
        sends_queries = True

        def __init__(self) -> None:
            super().__init__()
            self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)
            self.rows = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.rows += x.shape[0]
            return torch.stack([x.flatten(1).mean(1), 1 - x.flatten(1).mean(1)], 1)

    net = Remote()
    model_label_fn(net)(torch.rand(10, 1, 4, 4, generator=torch.Generator().manual_seed(0)))
    assert net.rows == 10


def test_layout_choice_is_measured_label_checked_and_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep also times channels-last vs contiguous at its batch: the choice is one of the two, the
    labels agree, it is cached with the batch, and the caller's weights stay as they were."""
    import medshield.models.inference as inf

    model = tiny_model(in_channels=3, seed=3)
    weights = {n: (p.data_ptr(), p.is_contiguous()) for n, p in model.named_parameters()}
    choice = inf.forward_choice(model, (3, 16, 16), sizes=(8, 16))
    assert choice.layout in ("contiguous", "channels_last") and choice.batch in (8, 16)
    assert choice.labels_identical is True and set(choice.layout_rates) == {"contiguous", "channels_last"}
    assert inf.forward_choice(model, (3, 16, 16)) is choice and inf.best_batch_size(model, (3, 16, 16)) == choice.batch
    assert {n: (p.data_ptr(), p.is_contiguous()) for n, p in model.named_parameters()} == weights
    x = torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for margin, layouts in ((0.0, ("channels_last",)), (float("inf"), ("contiguous",))):  # force each side
        monkeypatch.setattr(inf, "LAYOUT_MARGIN", margin)
        fresh = tiny_model(in_channels=3, seed=3)
        assert inf.forward_choice(fresh, (3, 16, 16), sizes=(8,), probe=x).layout in layouts
        assert torch.equal(model_label_fn(fresh)(x), model_label_fn(fresh, 4096)(x))


@pytest.mark.parametrize("path", ["channels_last", "frozen"])
def test_fast_paths_follow_weight_updates(path: str) -> None:
    """Channels-last copies and the frozen inference graph answer as the module does, also after a
    training step changed a weight in place."""
    import medshield.models.inference as inf

    model = tiny_model(in_channels=3, seed=4)
    fast = inf.path_forward(model, path)
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.allclose(fast(x), model(x), atol=1e-5)
    with torch.no_grad():
        next(p for p in model.parameters() if p.ndim == 4).mul_(-2)  # a training step, in place
    with torch.inference_mode():
        assert torch.allclose(fast(x), model(x), atol=1e-5)


def test_frozen_graph_is_pinned_only() -> None:
    """The frozen graph gives the module's labels through a pinned label function and is never picked by
    the measurement (its last-bit differences can flip labels at boundary points)."""
    import medshield.models.inference as inf

    model = tiny_model(in_channels=3, seed=5)
    images = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(model_label_fn(model, layout="frozen")(images), model_label_fn(model, layout="contiguous")(images))
    assert inf.forward_choice(model, (3, 16, 16), sizes=(8,)).layout in ("contiguous", "channels_last")
    with pytest.raises(ValueError, match="forward path"):
        inf.path_forward(model, "fast")


def test_a_pinned_path_gets_its_own_batch_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    """A label function pinned to the frozen graph sweeps the batch size on that graph (its best batch
    differs from the module's), through the instance it answers with, cached apart from the module's
    choice; its labels are unchanged."""
    import medshield.models.inference as inf

    model = tiny_model(in_channels=3, seed=6)
    swept: list[object] = []
    sweep = inf.forward_rates
    monkeypatch.setattr(inf, "forward_rates", lambda fwd, *a, **k: (swept.append(fwd), sweep(fwd, *a, **k))[1])
    x = torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    labels = model_label_fn(model, layout="frozen")(x)
    assert len(swept) == 1 and isinstance(swept[0], inf.Frozen)
    choice = inf.forward_choice(model, (3, 16, 16), path="frozen")
    assert choice.swept == choice.layout == "frozen" and choice.record()["swept"] == "frozen" and not choice.layout_tried
    assert isinstance(inf.fast_forward(model, choice), inf.Frozen)  # the swept path, not the plain module
    assert inf.forward_choice(model, (3, 16, 16), layouts=False).swept == "contiguous" and swept[-1] is model
    assert torch.equal(labels, model_label_fn(model, 4096)(x))
    with pytest.raises(ValueError, match="forward path"):
        inf.forward_choice(model, (3, 16, 16), path="fast")


class _LayoutSensitive(torch.nn.Module):
    """A classifier whose label depends on the memory layout (stands in for a kernel that rounds differently)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.conv(x).mean((2, 3))
        return -logits if x.is_contiguous(memory_format=torch.channels_last) else logits


def test_layout_that_changes_labels_is_never_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    import medshield.models.inference as inf

    monkeypatch.setattr(inf, "LAYOUT_MARGIN", 0.0)  # even when channels-last "wins" the timing
    model = _LayoutSensitive().eval()
    choice = inf.forward_choice(model, (3, 8, 8), sizes=(8,))
    assert choice.labels_identical is False and choice.layout == "contiguous"


def test_explicit_path_and_remote_models_are_left_as_they_are() -> None:
    """An explicit inference path keeps its own layout (no layout trial); a remote model is neither swept
    nor given a layout: its module gets exactly the rows asked for, in the caller's layout."""
    import medshield.models.inference as inf

    explicit = inference_path(tiny_model(in_channels=3), "channels_last")
    choice = inf.forward_choice(explicit, (3, 16, 16), sizes=(8,))
    assert choice.labels_identical is None and choice.layout == "contiguous" and not choice.layout_rates

    class Remote(torch.nn.Module):
        sends_queries = True

        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 1)
            self.seen: list[bool] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.seen.append(x.is_contiguous())
            return self.conv(x).mean((2, 3))

    net = Remote()
    model_label_fn(net)(torch.rand(10, 3, 4, 4, generator=torch.Generator().manual_seed(0)))
    assert net.seen == [True] and net not in inf._BEST


def test_a_pinned_layout_is_used_without_a_layout_trial() -> None:
    """``layout="contiguous"`` (the campaign's: records must not depend on a timing) skips the trial;
    ``"channels_last"`` is used as asked; both give the labels of the plain model here."""
    import medshield.models.inference as inf

    model = tiny_model(in_channels=3, seed=5)
    x = torch.rand(24, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    plain = model_label_fn(model, 4096)(x)
    assert torch.equal(model_label_fn(model, layout="contiguous")(x), plain)
    assert not inf.forward_choice(model, (3, 16, 16), layouts=False).layout_tried
    assert torch.equal(model_label_fn(model, layout="channels_last")(x), plain)
    assert torch.equal(model_label_fn(model, 8, layout="channels_last")(x), plain)
    with pytest.raises(ValueError, match="layout"):
        model_label_fn(model, layout="nhwc")
