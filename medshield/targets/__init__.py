"""Targets: the system under test as one value (issue 14).

Layer: between attacks/defenses and evaluation (imports data, models, attacks, defenses; never
evaluation or above).

- :mod:`~medshield.targets.card`: the YAML target card (pydantic; one-line errors naming file and field).
- :mod:`~medshield.targets.source`: the registry of model sources keyed by ``model.format``
  (:func:`register_source`, :class:`LoadedNet`): how a new source plugs in is described there.
- :mod:`~medshield.targets.local`: medshield_run, python, torchscript, onnx, monai_bundle.
- :mod:`~medshield.targets.target`: :class:`Target` (pixel-space logits model + flags + digests),
  :func:`build_target`, :func:`open_target` (card file, run folder or Target).
- :mod:`~medshield.targets.data`: the dataset for a target (MedMNIST/folder names or a CSV manifest),
  sized and coloured as the card says.

A new source module registers itself on import: add it to the imports below.
"""

from medshield.targets import local  # noqa: F401  (registers the local sources)
from medshield.targets import remote_sources  # noqa: F401  (registers oip, http, medshield_api)
from medshield.targets.card import CardError, TargetCard, card_from_dict, card_from_run, dump_card, load_card
from medshield.targets.source import SOURCE_INFO, SOURCES, LoadedNet, file_digest, register_source
from medshield.targets.target import GRADIENTS_UNAVAILABLE, Target, build_target, open_target, ref_name

__all__ = [
    "GRADIENTS_UNAVAILABLE", "SOURCES", "SOURCE_INFO", "CardError", "LoadedNet", "Target", "TargetCard",
    "build_target", "card_from_dict", "card_from_run", "dump_card", "file_digest", "load_card", "open_target",
    "ref_name", "register_source",
]
