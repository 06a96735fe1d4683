"""Models: the factory over MONAI nets, the bounded wrapper, checkpoints and training."""

from medshield.models.bounded import (BoundedModel, class_logits, eval_mode, model_device, predict, predict_labels,
                                      probabilities)
from medshield.models.checkpoint import load_run, resolve_device, save_run
from medshield.models.factory import MODELS, ModelConfig, create_model, model_names

__all__ = [
    "MODELS", "BoundedModel", "ModelConfig", "class_logits", "create_model", "eval_mode", "load_run",
    "model_device", "model_names", "predict", "predict_labels", "probabilities", "resolve_device", "save_run",
]
