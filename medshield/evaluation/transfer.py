"""Transferability: adversarial images made on each source model, evaluated on every target model
(the source x target accuracy matrix of the thesis's Tables 3-5/3-6)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from medshield.attacks import Attack
from medshield.evaluation.identity import job_identity
from medshield.models.metrics import classification_metrics
from medshield.evaluation.store import RecordStore
from medshield.evaluation.whitebox import run_batched
from medshield.models import predict, predict_labels, probabilities
from medshield.progress import progress_bar


def check_compatible(models: Mapping[str, nn.Module]) -> None:
    """All models must take the same input shape (same channels and size) to share adversarial images."""
    shapes = {name: (m.config.in_channels, m.config.image_size) for name, m in models.items() if hasattr(m, "config")}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"transfer needs models with the same input shape; got {shapes} (train them with the same --rgb/--size)")


def transfer_records(models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor, attack: Attack, eps: float,
                     *, positive_class: int | None = None, batch_size: int = 128, seed: int = 0,
                     store: RecordStore | None = None, meta: Mapping[str, Any] | None = None,
                     sources: Mapping[str, nn.Module] | None = None,
                     identity: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One record per (source, target): target accuracy on clean images and on the source's adversarials,
    and the fraction of the target's correctly classified images that the transferred attack flips.
    ``sources`` (default ``models``): the differentiable models adversarials are made on; a target
    without gradients (ONNX without conversion, a remote endpoint) is only a transfer target.
    ``identity``: ``{"models": {name: fingerprint}, "data": ...}``; a stored row is reused only when
    its source, targets, images, attack, eps and seed are the same (else refused or recomputed)."""
    check_compatible(models)
    sources = models if sources is None else sources
    clean = {name: predict(m, x) for name, m in models.items()}
    records: list[dict[str, Any]] = []
    with progress_bar("transfer", len(sources)) as advance:
        for source, src_model in sources.items():

            def compute(source: str = source, src_model: nn.Module = src_model) -> list[dict[str, Any]]:
                result = run_batched(attack, src_model, x, y, eps, batch_size, seed)
                return [transfer_record(source, target, y, clean[target], predict(tgt, result.adversarial),
                                        result.seconds, positive_class, {**(meta or {}), "eps": eps})
                        for target, tgt in models.items()]

            key = f"{source}|{attack!r}|{eps:.8g}"
            inputs = None if identity is None else job_identity(
                source=identity["models"][source], targets=[identity["models"][t] for t in models],
                data=identity["data"], attack=repr(attack), eps=eps, seed=seed, batch_size=batch_size)
            records.extend(store.get_or_run(key, compute, inputs) if store is not None else compute())
            advance(1, info=source)
    return records


def transfer_record(source: str, target: str, y: torch.Tensor, clean_logits: torch.Tensor, adv_logits: torch.Tensor,
                    seconds: float, positive_class: int | None, meta: Mapping[str, Any]) -> dict[str, Any]:
    clean_pred, adv_pred = predict_labels(clean_logits), predict_labels(adv_logits)
    correct = clean_pred == y
    m = classification_metrics(y, probabilities(adv_logits), positive_class, n_bootstrap=0)
    return {**meta, "source": source, "target": target, "white_box": source == target, "n": int(y.shape[0]),
            "clean_accuracy": float(correct.double().mean()), "robust_accuracy": float((adv_pred == y).double().mean()),
            "success_rate": float((correct & (adv_pred != y)).sum()) / max(int(correct.sum()), 1),
            "sensitivity": m.get("sensitivity"), "specificity": m.get("specificity"), "source_seconds": seconds}


def accuracy_matrix(records: list[dict[str, Any]], key: str = "robust_accuracy") -> tuple[list[str], list[list[float]]]:
    """``(names, matrix[source][target])`` from transfer records."""
    names = list(dict.fromkeys([r["source"] for r in records] + [r["target"] for r in records]))
    cell = {(r["source"], r["target"]): r[key] for r in records}
    return names, [[cell.get((s, t), float("nan")) for t in names] for s in names]
