"""The training loop: Adam, batched augmentation, best-by-validation checkpoint, early stopping,
seeded and resumable (state saved after every epoch; a resumed run equals an uninterrupted one).

Training-time defenses plug in as a :data:`BatchHook` that rewrites each batch (see ``defenses``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from medshield.data.base import Dataset, ImageSet
from medshield.models.metrics import point_metrics
from medshield.models.augment import AffineAugment
from medshield.models.bounded import BoundedModel, class_logits, model_device, predict
from medshield.models.checkpoint import MODEL_FILE, load_tensors, resolve_device, save_tensors, write_json
from medshield.progress import progress_bar

log = logging.getLogger(__name__)
BatchHook = Callable[[BoundedModel, torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
STATE_DIR = "state"


@dataclass
class TrainConfig:
    """Training hyperparameters (thesis defaults: Adam, lr 1e-3, batch 32)."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    augment: bool = True
    patience: int = 5
    monitor: str = "auc"
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs and batch_size must be >= 1 and lr > 0")
        if self.monitor not in ("accuracy", "auc", "loss"):
            raise ValueError(f"monitor must be accuracy, auc or loss, got {self.monitor!r}")


@dataclass
class TrainState:
    """What survives an interruption (``RUN/state/train_state.json``)."""

    next_epoch: int = 0
    best_score: float = float("-inf")
    best_epoch: int = -1
    bad_epochs: int = 0
    train_seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False


def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on two-column logits (equals BCE-with-logits for single-logit models)."""
    return F.cross_entropy(class_logits(logits), labels)


def validation_scores(model: BoundedModel, split: ImageSet, positive_class: int | None) -> dict[str, float]:
    logits = predict(model, split.images())
    probs = torch.softmax(class_logits(logits), 1)
    scores = point_metrics(split.labels.numpy(), probs.numpy(), positive_class)
    scores["loss"] = float(loss_fn(logits, split.labels))
    return scores


def train_model(
    model: BoundedModel,
    dataset: Dataset,
    run_dir: Path,
    cfg: TrainConfig,
    hook: BatchHook | None = None,
    resume: bool = False,
) -> TrainState:
    """Train ``model`` on ``dataset.train``; ``RUN/model.safetensors`` holds the best-by-validation
    weights, which are loaded into ``model`` at the end."""
    run_dir = Path(run_dir)
    device = resolve_device(cfg.device)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    state = TrainState()
    augment = AffineAugment() if cfg.augment else None
    with torch.random.fork_rng(devices=[]):  # dropout etc. seeded locally, caller's RNG untouched
        torch.manual_seed(cfg.seed)
        if resume and (run_dir / STATE_DIR / "train_state.json").is_file():
            state = _load_state(run_dir, model, opt, gen)
            log.info("resuming at epoch %d", state.next_epoch + 1)
        for epoch in range(state.next_epoch, cfg.epochs):
            if state.stopped_early:
                break
            start = time.perf_counter()
            train_loss = _run_epoch(model, dataset.train, opt, gen, cfg, augment, hook, epoch)
            scores = validation_scores(model, dataset.val, dataset.positive_class)
            state.train_seconds += time.perf_counter() - start
            _after_epoch(state, model, run_dir, cfg, epoch, train_loss, scores)
            _save_state(run_dir, state, model, opt, gen)
    best = load_tensors(run_dir / MODEL_FILE)
    model.load_state_dict(best)
    return state


def train_mode(model: nn.Module) -> None:
    """``model.train()``, except BatchNorm layers whose parameters are all frozen (a frozen backbone):
    they keep normalising with their pre-trained running statistics and do not update them."""
    model.train()
    for m in model.modules():
        params = list(m.parameters(recurse=False))
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)) and params and not any(p.requires_grad for p in params):
            m.eval()


def _run_epoch(model, data, opt, gen, cfg, augment, hook, epoch) -> float:  # noqa: ANN001
    train_mode(model)
    device = model_device(model)
    total, count = 0.0, 0
    steps = -(-len(data) // cfg.batch_size)
    with progress_bar(f"epoch {epoch + 1}/{cfg.epochs}", steps) as advance:
        for x, y in data.batches(cfg.batch_size, gen, shuffle=True):
            x, y = x.to(device), y.to(device)
            if augment is not None:
                x = augment(x, gen)
            if hook is not None:
                x, y = hook(model, x, y, gen)
                train_mode(model)
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * y.shape[0]
            count += y.shape[0]
            advance(1, info=f"loss {total / count:.4f}")
    return total / max(count, 1)


def _after_epoch(state: TrainState, model, run_dir, cfg, epoch, train_loss, scores) -> None:  # noqa: ANN001
    score = -scores["loss"] if cfg.monitor == "loss" else scores[cfg.monitor]
    score = float("-inf") if score != score else score  # NaN never wins
    record = {"epoch": epoch + 1, "train_loss": train_loss, **{f"val_{k}": v for k, v in scores.items()},
              "seconds": state.train_seconds}
    state.history.append(record)
    if score > state.best_score or state.best_epoch < 0:
        state.best_score, state.best_epoch, state.bad_epochs = score, epoch + 1, 0
        save_tensors(run_dir / MODEL_FILE, model.state_dict())
    else:
        state.bad_epochs += 1
    state.stopped_early = state.bad_epochs >= cfg.patience
    state.next_epoch = epoch + 1
    log.info("epoch %d: train loss %.4f, val acc %.4f, val auc %.4f%s", epoch + 1, train_loss,
             scores["accuracy"], scores["auc"], " (best)" if state.best_epoch == epoch + 1 else "")


def _save_state(run_dir: Path, state: TrainState, model, opt, gen) -> None:  # noqa: ANN001
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    for idx, slots in opt.state_dict()["state"].items():
        for name, value in slots.items():
            tensors[f"opt.{idx}.{name}"] = torch.as_tensor(value)
    tensors["rng.generator"] = gen.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    save_tensors(run_dir / STATE_DIR / "last.safetensors", tensors)
    meta = {"state": asdict(state), "param_groups": opt.state_dict()["param_groups"]}
    write_json(run_dir / STATE_DIR / "train_state.json", meta)


def _load_state(run_dir: Path, model, opt, gen) -> TrainState:  # noqa: ANN001
    meta = json.loads((run_dir / STATE_DIR / "train_state.json").read_text())
    tensors = load_tensors(run_dir / STATE_DIR / "last.safetensors")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
    gen.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch"])
    state = TrainState(**meta["state"])
    if state.best_score is None:
        state.best_score = float("-inf")
    return state
