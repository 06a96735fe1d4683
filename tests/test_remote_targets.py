"""Remote model sources (oip, http, medshield_api) against small in-process servers: request format,
label-only access, exact query accounting, one-line errors, and cards that load them."""

from __future__ import annotations

from pathlib import Path

import json

import httpx
import pytest
import torch
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient

from conftest import tiny_model
from medshield.data import load_demo
from medshield.errors import MedShieldError
from medshield.models import predict, predict_labels
from medshield.targets import CardError, load_card, open_target
from medshield.targets.http import HttpTransport, RemoteError
from medshield.targets.json_api import JsonApiModel, dotted, fill
from medshield.targets.oip import OIPModel
from medshield.targets.remote import remote_counts
from oip_helpers import fake_oip_app
from server_helpers import serve_on_loopback

X = torch.rand(7, 1, 28, 28, generator=torch.Generator().manual_seed(3))


def _oip(app: FastAPI, **kw: object) -> OIPModel:
    return OIPModel("http://testserver", "tiny", http=TestClient(app), **kw)  # type: ignore[arg-type]


def test_oip_batches_reads_named_output_and_counts() -> None:
    model = tiny_model()
    app = fake_oip_app(model)
    remote = _oip(app, output="logits", batch_size=3)
    assert remote.ready() and remote.input_name == "pixels"  # from the model's metadata
    body = remote.request_body(X[:2].numpy())
    assert body["inputs"][0]["shape"] == [2, 1, 28, 28] and body["inputs"][0]["datatype"] == "FP32"
    assert body["outputs"] == [{"name": "logits"}] and len(body["inputs"][0]["data"]) == 2 * 784
    with torch.no_grad():
        torch.testing.assert_close(remote.scores(X), model(X), rtol=0, atol=1e-6)  # batches of 3 vs 7: last bits
    assert remote.counts() == {"queries": 7, "rows_sent": 7, "requests": 3} and app.state.served == 7
    assert remote.labels(X).tolist() == predict_labels(predict(model, X)).tolist()
    labels_only = _oip(fake_oip_app(model, labels_only=True), output_kind="labels")
    assert labels_only.labels(X).tolist() == predict_labels(predict(model, X)).tolist()
    with pytest.raises(MedShieldError, match="labels only"):
        labels_only.scores(X)


def test_remote_errors_are_one_line() -> None:
    app = fake_oip_app(tiny_model())
    with pytest.raises(RemoteError, match=r"^HTTP 404: Model other not found \(POST http://testserver/v2/models/other/infer\)$"):
        OIPModel("http://testserver", "other", input="pixels", http=TestClient(app)).labels(X)
    with pytest.raises(RemoteError, match="no output named 'nope' \\(got probs, logits\\)"):
        _oip(app, output="nope").labels(X)
    with pytest.raises(RemoteError, match="cannot reach .*127.0.0.1:1.*connection refused"):
        OIPModel("http://127.0.0.1:1", "tiny", input="pixels", timeout=2).labels(X)

    def answers(payload: object, status: int = 200) -> OIPModel:
        transport = httpx.MockTransport(lambda request: httpx.Response(status, json=payload))
        return OIPModel("http://mock", "tiny", input="pixels", http=httpx.Client(transport=transport, base_url="http://mock"))

    for payload, message in [({"outputs": []}, "no 'outputs' list"),
                             ({"outputs": [{"name": "y", "shape": [7, 2], "data": [0.1] * 13}]}, r"shape \[7, 2\] does not hold 13"),
                             ({"outputs": [{"name": "y", "shape": [3, 2], "data": [0.1] * 6}]}, "7 images sent"),
                             ({"outputs": [{"name": "y", "shape": [7], "data": ["a"] * 7}]}, "not a \\(nested\\) list of numbers")]:
        with pytest.raises(RemoteError, match=message):
            answers(payload).labels(X)
    bad_json = httpx.MockTransport(lambda request: httpx.Response(200, text="<html>gateway</html>"))
    with pytest.raises(RemoteError, match="not JSON"):
        OIPModel("http://mock", "t", input="i", http=httpx.Client(transport=bad_json, base_url="http://mock")).labels(X)


def test_timeouts_count_as_sent_and_are_never_retried() -> None:
    calls = []

    def timeout(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise httpx.ReadTimeout("slow", request=request)

    client = httpx.Client(transport=httpx.MockTransport(timeout), base_url="http://mock")
    remote = OIPModel("http://mock", "t", input="i", http=client, retries=3, timeout=1)
    with pytest.raises(RemoteError, match="no answer .* within 1 s .*not retried"):
        remote.labels(X)
    assert len(calls) == 1 and remote.counts() == {"queries": 0, "rows_sent": 7, "requests": 0}
    refused = []

    def refuse(request: httpx.Request) -> httpx.Response:
        refused.append(1)
        raise httpx.ConnectError("refused", request=request)

    client = httpx.Client(transport=httpx.MockTransport(refuse), base_url="http://mock")
    with pytest.raises(RemoteError, match="cannot reach"):
        OIPModel("http://mock", "t", input="i", http=client, retries=2).labels(X)
    assert len(refused) == 3  # connection never opened: safe to retry, nothing was sent


def test_json_template_api() -> None:
    template = {"instances": "$images", "meta": {"n": "$n", "tag": "x"}}
    assert fill(template, [[1]], 1) == {"instances": [[1]], "meta": {"n": 1, "tag": "x"}}
    assert dotted({"a": {"b": [{"c": 3}]}}, "a.b.0.c") == 3
    with pytest.raises(RemoteError, match="no 'd' on the path 'a.d'"):
        dotted({"a": {}}, "a.d")
    with pytest.raises(MedShieldError, match="exactly once"):
        JsonApiModel("http://x", request={"a": "$images", "b": "$images"})
    model = tiny_model()
    app = FastAPI()

    @app.post("/classify")
    def classify(body: dict) -> dict:
        x = torch.tensor(body["batch"]["pixels"], dtype=torch.float32).permute(0, 3, 1, 2)  # NHWC on the wire
        assert body["batch"]["count"] == x.shape[0]
        with torch.no_grad():
            return {"result": {"scores": model(x).softmax(1).tolist()}}

    remote = JsonApiModel("http://testserver/classify", request={"batch": {"pixels": "$images", "count": "$n"}},
                          response="result.scores", layout="NHWC", output_kind="probabilities", batch_size=4,
                          http=TestClient(app, base_url="http://testserver/classify"))
    assert remote.labels(X).tolist() == predict_labels(predict(model, X)).tolist()
    assert (remote.queries, remote.requests) == (7, 2)


def test_header_placeholders_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIAGE_TOKEN", "s3cret")
    assert HttpTransport("http://x", {"Authorization": "Bearer ${TRIAGE_TOKEN}"}).headers == {"Authorization": "Bearer s3cret"}
    with pytest.raises(MedShieldError, match="NOT_SET_ANYWHERE is not set"):
        HttpTransport("http://x", {"Authorization": "${NOT_SET_ANYWHERE}"})


def _card(tmp_path: Path, model: dict, **output: object) -> Path:
    card = {"model": model, "input": {"size": 28, "channels": 1, "mean": [0.5], "std": [0.5]},
            "output": {"kind": "logits", "task": "binary", "classes": ["normal", "pneumonia"], **output}}
    path = tmp_path / f"{model['format']}.yaml"
    path.write_text(yaml.safe_dump(card))
    return path


def test_cards_for_remote_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model()
    expected = predict_labels(predict(model, X))
    app = fake_oip_app(model, mean=0.5, std=0.5)
    with serve_on_loopback(app) as url:
        target = open_target(_card(tmp_path, {"format": "oip", "url": url, "name": "tiny", "output_name": "logits",
                                              "batch_size": 4}))
        assert not target.gradients and target.remote and target.num_outputs == 2
        assert target.describe()["notes"]["access"] == "scores"
        served = app.state.served
        assert predict_labels(predict(target.model, X)).tolist() == expected.tolist()
        assert remote_counts(target.model)["queries"] == app.state.served  # every image the server saw
        assert app.state.served - served == 7
        with pytest.raises(CardError, match=r"oip.yaml: model.name: HTTP 404"):
            open_target(_card(tmp_path, {"format": "oip", "url": url, "name": "missing"}))
    with pytest.raises(CardError, match="oip.yaml: model.url: must start with http"):
        load_card(_card(tmp_path, {"format": "oip", "url": "ftp://x", "name": "m"}))
    with pytest.raises(CardError, match="oip.yaml: model.name: Field required"):
        load_card(_card(tmp_path, {"format": "oip", "url": "http://x"}))
    with pytest.raises(CardError, match="oip.yaml: model.inputs: Extra inputs"):
        load_card(_card(tmp_path, {"format": "oip", "url": "http://x", "name": "m", "inputs": "x"}))
    with pytest.raises(CardError, match="oip.yaml: model.url: cannot reach"):
        open_target(_card(tmp_path, {"format": "oip", "url": "http://127.0.0.1:1", "name": "m", "timeout": 2}))
    labels_app = fake_oip_app(model, labels_only=True, mean=0.5, std=0.5)
    with serve_on_loopback(labels_app) as url:
        target = open_target(_card(tmp_path, {"format": "oip", "url": url, "name": "tiny", "returns": "labels"}))
        assert target.describe()["notes"]["access"] == "labels only" and labels_app.state.served == 0  # no probe
        assert predict_labels(predict(target.model, X)).tolist() == expected.tolist()


def test_medshield_api_card(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from server_helpers import KEY, make_client

    client = make_client(tmp_path)
    model = tiny_model()
    with serve_on_loopback(client.app) as url:
        card = {"model": {"format": "medshield_api", "url": url, "batch_size": 3},
                "input": {"size": 28, "channels": 1},  # the server normalises: no mean/std
                "output": {"kind": "probabilities", "task": "binary", "classes": ["normal", "pneumonia"]}}
        path = tmp_path / "api.yaml"
        path.write_text(yaml.safe_dump(card))
        monkeypatch.delenv("MEDSHIELD_API_KEY", raising=False)
        with pytest.raises(CardError, match=r"api.yaml: model.api_key_env: set the API key in \$MEDSHIELD_API_KEY"):
            open_target(path)
        monkeypatch.setenv("MEDSHIELD_API_KEY", KEY)
        target = open_target(path)
        assert predict_labels(predict(target.model, X)).tolist() == predict_labels(predict(model, X)).tolist()
        assert remote_counts(target.model) == {"queries": 7, "rows_sent": 7, "requests": 3}
        card["model"]["returns"] = "scores"
        path.write_text(yaml.safe_dump(card))
        with pytest.raises(CardError, match="does not expose scores"):
            open_target(path)


def test_blackbox_through_a_remote_card_counts_exactly(tmp_path: Path) -> None:
    from medshield import api

    model = tiny_model()
    app = fake_oip_app(model, mean=0.5, std=0.5)
    with serve_on_loopback(app) as url:
        card = _card(tmp_path, {"format": "oip", "url": url, "name": "tiny", "output_name": "logits", "batch_size": 512},
                     outputs=2)  # the width is known: no probe query at load
        before = app.state.served
        summary = api.blackbox(str(card), tmp_path / "bb", dataset="demo", attacks=["hsja"], budgets=[40, 80],
                               n_images=2, seed=1)
    assert summary["remote"]["queries"] == summary["remote"]["rows_sent"] == app.state.served - before
    jobs = [j for k, j in json.loads((tmp_path / "bb" / "jobs.json").read_text())["jobs"].items() if "sent_attack" in j]
    assert len(jobs) == 1 and sum(jobs[0]["queries"]) == jobs[0]["sent_attack"] <= 2 * 80
    # the rest are whole-split passes: clean metrics and the choice of correctly classified images
    rest = summary["remote"]["queries"] - jobs[0]["sent_attack"] - jobs[0]["sent_verify"]
    assert rest > 0 and rest % len(load_demo().test) == 0
