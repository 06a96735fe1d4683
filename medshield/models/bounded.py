"""BoundedModel: the one place where normalisation lives, so attacks only ever see [0, 1] pixels."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


class BoundedModel(nn.Module):
    """Wraps a network that expects normalised inputs; ``forward`` takes images in ``bounds``.

    ``num_classes == 1`` means a single sigmoid logit (binary task); use :func:`class_logits` to
    get the two-column form every loss and attack uses.
    """

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        super().__init__()
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.net = net
        self.num_classes = num_classes
        self.bounds = bounds
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def class_logits(logits: torch.Tensor) -> torch.Tensor:
    """Two-column logits for a single-logit (sigmoid) model: ``[0, z]`` has softmax = sigmoid(z);
    multi-logit outputs pass through unchanged."""
    if logits.ndim == 1:
        logits = logits.unsqueeze(1)
    if logits.shape[1] == 1:
        return torch.cat([torch.zeros_like(logits), logits], dim=1)
    return logits


def predict_labels(logits: torch.Tensor) -> torch.Tensor:
    """Predicted class per row, for single- or multi-logit outputs."""
    return class_logits(logits).argmax(dim=1)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities ``[N, K>=2]`` for single- or multi-logit outputs."""
    return torch.softmax(class_logits(logits), dim=1)


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put modules in eval mode and restore every submodule's own previous mode afterwards.

    Per submodule, not ``m.train(state)`` (MONAI's ``eval_mode``): a wrapper built around an eval-mode model
    (RND, DND, :class:`ExpectationModel`) starts in train mode, and restoring it recursively would switch the
    wrapped model's dropout/batch norm to training."""
    states = [(sub, sub.training) for m in modules for sub in m.modules()]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for sub, state in states:
            sub.training = state


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s parameters (else its buffers); CPU for a module holding neither, such as
    a fixed function or a target that wraps a remote service."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits for ``images`` in eval mode, batched; returns ``[N, num_logits]`` on CPU."""
    device = model_device(model)
    outs = []
    with eval_mode(model):
        for chunk in images.split(batch_size):
            outs.append(model(chunk.to(device)).float().cpu())
    return torch.cat(outs) if outs else torch.empty(0)
