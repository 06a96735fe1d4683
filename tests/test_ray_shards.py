"""Black-box jobs sharded by image: with ``per_image`` the records do not depend on the shard size, so
one-image shards on N (Ray) workers give exactly the records of one job over all images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from medshield.campaign.config import CampaignConfig
from medshield.campaign.jobs import merge_records
from medshield.campaign.runner import run_campaign

OFF = {"enabled": False}


def config(shard_size: int, defenses: list[str], **extra: Any) -> CampaignConfig:
    return CampaignConfig.model_validate({
        "clean": OFF, "whitebox": OFF, "transfer": OFF, "detection": OFF, "defenses": OFF,
        "blackbox": {"attacks": ["hsja"], "defenses": defenses, "n_images": 3, "shard_size": shard_size,
                     "budgets": [40, 100], "per_image": True, "adaptive_k": 3}, **extra})


def black_box(res: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in res["blackbox"]], res["strips"]


def test_merge_records_concatenates_per_image_lists() -> None:
    a = {"l2": {"10": [1.0]}, "queries": [10], "sent_attack": 10, "norm": "l2", "first_adversarial": {"10": [0.1]}}
    b = {"l2": {"10": [2.0]}, "queries": [7], "sent_attack": 7, "norm": "l2", "first_adversarial": {"10": [0.2]}}
    assert merge_records([a, b]) == {"l2": {"10": [1.0, 2.0]}, "queries": [10, 7], "sent_attack": 17, "norm": "l2",
                                     "first_adversarial": {"10": [0.1]}}


def test_per_image_records_do_not_depend_on_the_shard_size(tmp_path: Path, demo_run: Path) -> None:
    whole = run_campaign(config(3, ["none"]), [str(demo_run)], tmp_path / "whole")
    split = run_campaign(config(1, ["none"]), [str(demo_run)], tmp_path / "split")
    assert black_box(whole) == black_box(split)
    assert len(whole["blackbox"]) == 2 and whole["blackbox"][0]["n_images"] == 3


@pytest.mark.slow
def test_per_image_noise_defense_does_not_depend_on_the_shard_size(tmp_path: Path, demo_run: Path) -> None:
    """A randomised defense (majority vote of 3) too: its noise is seeded per image."""
    whole = run_campaign(config(3, ["rnd:nu=0.04"]), [str(demo_run)], tmp_path / "whole")
    split = run_campaign(config(1, ["rnd:nu=0.04"]), [str(demo_run)], tmp_path / "split")
    assert black_box(whole) == black_box(split)
    assert whole["blackbox"][0]["adaptive_k"] == 3


@pytest.mark.slow
def test_one_image_shards_on_two_ray_workers_match_one_job(tmp_path: Path, demo_run: Path) -> None:
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'medshield[ray]'")
    whole = run_campaign(config(3, ["none"]), [str(demo_run)], tmp_path / "whole")
    on_ray = run_campaign(config(1, ["none"], executor="ray", workers=2), [str(demo_run)], tmp_path / "ray")
    assert black_box(whole) == black_box(on_ray)
