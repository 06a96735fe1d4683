"""End to end: GBBA against a live `medshield serve` on loopback equals the in-process attack, and the
server counts exactly the queries the attack (plus image selection and re-checks) sent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medshield import api
from medshield.data import load_demo
from medshield.evaluation.blackbox import BlackboxConfig, run_blackbox
from medshield.server.app import ServeConfig, create_app
from medshield.server.audit import read_audit
from medshield.server.auth import KeyStore
from server_helpers import serve_on_loopback

uvicorn = pytest.importorskip("uvicorn")
KEY = "key-remote-0123456789"


def _app(model, audit: Path):  # noqa: ANN001, ANN202
    cfg = ServeConfig(model_name="smallcnn", channels=1, image_size=28, class_names=["normal", "opacity"],
                      audit_log=str(audit))
    return create_app(model, KeyStore([KEY]), cfg)


def test_gbba_over_http_equals_in_process(tmp_path: Path, demo_model) -> None:  # noqa: ANN001
    budgets, n = [60, 200], 3
    with serve_on_loopback(_app(demo_model, tmp_path / "audit.jsonl")) as url:
        remote = api.blackbox(None, tmp_path / "remote", dataset="demo", attacks=["gbba"], budgets=budgets,
                              n_images=n, seed=3, target=url, api_key=KEY, batch_size=64)
    cfg = BlackboxConfig(attacks=["gbba"], budgets=budgets, n_images=n, seed=3, batch_size=64)
    local = run_blackbox(demo_model, load_demo().test, tmp_path / "local", cfg)
    assert remote["image_indices"] == local["image_indices"]
    for r, l in zip(remote["records"], local["records"]):
        assert (r["budget"], r["mean_l2"], r["median_l2"], r["success_rate"]) == \
               (l["budget"], l["mean_l2"], l["median_l2"], l["success_rate"])
    assert remote["records"][0]["defense"] == "remote"
    job = next(iter(json.loads((tmp_path / "remote" / "jobs.json").read_text())["jobs"].values()))
    assert sum(job["queries"]) == job["sent_attack"] <= n * budgets[-1]
    served = sum(line["n"] for line in read_audit(tmp_path / "audit.jsonl")
                 if line.get("status") == 200 and line.get("path") == "/v1/predict")  # GET /v1/model is logged too
    selection = len(load_demo().test)
    assert served == remote["remote"]["queries_sent"] == selection + job["sent_attack"] + job["sent_verify"]
