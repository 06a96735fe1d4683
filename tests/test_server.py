"""The HTTP service in-process (FastAPI TestClient): predictions, keys, limits, detector, audit, client."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medshield.defenses.limits import QueryLimiter
from medshield.server.app import Action
from medshield.server.audit import read_audit
from medshield.server.auth import KeyStore
from medshield.server.client import AuthenticationError, Forbidden, RateLimited, RemoteClassifier
from server_helpers import AUTH, KEY, OTHER_KEY, dicom_bytes, expected_labels, make_client, png_bytes

pytest.importorskip("fastapi")
IMAGES = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def post_json(client, payload: object, headers: dict[str, str] = AUTH):
    return client.post("/v1/predict", json=payload, headers=headers)


def test_health_model_and_openapi(tmp_path: Path) -> None:
    client = make_client(tmp_path)
    assert client.get("/v1/health").json() == {"status": "ok"}
    info = client.get("/v1/model", headers=AUTH).json()
    assert info["input_shape"] == [1, 28, 28] and info["classes"] == ["normal", "pneumonia"]
    assert info["scores_exposed"] is False and info["defenses"] == ["none"]
    doc = client.get("/openapi.json").json()
    body = doc["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body) and "BatchRequest" in doc["components"]["schemas"]


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong-key-0123456789"}, {"X-API-Key": ""}])
def test_missing_or_wrong_key_is_401(tmp_path: Path, headers: dict[str, str]) -> None:
    client = make_client(tmp_path)
    for response in (client.get("/v1/model", headers=headers), post_json(client, {"images": IMAGES.tolist()}, headers)):
        assert response.status_code == 401 and "labels" not in response.json()


def test_keys_are_held_as_hashes_and_never_logged(tmp_path: Path) -> None:
    store = KeyStore([KEY])
    assert KEY not in repr(vars(store)) and store.identify(KEY) and store.identify(OTHER_KEY) is None
    client = make_client(tmp_path)
    post_json(client, {"images": IMAGES[:, 0].tolist()})
    text = (tmp_path / "audit.jsonl").read_text()
    assert KEY not in text and store.identify(KEY) in text
    with pytest.raises(Exception, match="at least 16"):
        KeyStore(["short"])
    with pytest.raises(Exception, match="no API keys"):
        KeyStore.from_sources(None, env="")


def test_key_sources(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    path.write_text(f"# comment\n{KEY}\n\n")
    store = KeyStore.from_sources(path, env=f" {OTHER_KEY} ,")
    assert len(store) == 2 and store.identify(OTHER_KEY)


def test_json_batches_match_in_process_predictions(tmp_path: Path) -> None:
    client = make_client(tmp_path, allow_scores=True)
    want = expected_labels(IMAGES)
    grey = post_json(client, {"images": IMAGES[:, 0].tolist()}).json()
    full = post_json(client, {"images": IMAGES.tolist()}).json()
    packed = {"shape": list(IMAGES.shape), "dtype": "float32", "data": base64.b64encode(IMAGES.numpy().tobytes()).decode()}
    b64 = post_json(client, {"array": packed}).json()
    assert grey["labels"] == full["labels"] == b64["labels"] == want
    assert b64["classes"] == [["normal", "pneumonia"][i] for i in want]
    assert np.allclose(np.sum(b64["scores"], axis=1), 1.0) and b64["queries_used"] == 15


def test_scores_hidden_unless_allowed(tmp_path: Path) -> None:
    assert post_json(make_client(tmp_path), {"images": IMAGES.tolist()}).json()["scores"] is None


def test_image_files_png_jpeg_dicom(tmp_path: Path) -> None:
    client = make_client(tmp_path)
    arr = (IMAGES[0, 0].numpy() * 255).round().astype(np.uint8)
    want = expected_labels(torch.from_numpy(arr / 255.0).float()[None, None])
    files = {
        "png": png_bytes(arr),
        "png16": png_bytes(arr.astype(np.uint16) * 257),
        "rgb-as-grey": png_bytes(np.stack([arr] * 3, axis=-1)),
        "jpeg": png_bytes(arr, fmt="JPEG"),
        "dicom": dicom_bytes(arr.astype(np.uint16) * 257),
    }
    for name, data in files.items():
        response = client.post("/v1/predict", files={"file": ("x", data, "application/octet-stream")}, headers=AUTH)
        assert response.status_code == 200, (name, response.text)
        if name != "jpeg":  # lossy
            assert response.json()["labels"] == want, name
    inverted = dicom_bytes(arr.astype(np.uint16) * 257, photometric="MONOCHROME1")
    response = client.post("/v1/predict", files={"file": ("x.dcm", inverted)}, headers=AUTH)
    assert response.json()["labels"] == expected_labels(1 - torch.from_numpy(arr / 255.0).float()[None, None])


def test_grey_is_replicated_for_rgb_model(tmp_path: Path) -> None:
    client = make_client(tmp_path, channels=3)
    got = post_json(client, {"images": IMAGES.tolist()}).json()["labels"]
    assert got == expected_labels(IMAGES.repeat(1, 3, 1, 1), channels=3)


BAD_JSON = [
    ({"images": torch.rand(2, 1, 27, 28).tolist()}, 422, "28x28"),
    ({"images": (IMAGES * 2).tolist()}, 422, "[0, 1]"),
    ({"images": (IMAGES - 1).tolist()}, 422, "[0, 1]"),
    ({"images": [[[0.5] * 28] * 28, [[0.5] * 27] * 28]}, 422, "ragged"),
    ({"images": [[["a"] * 28] * 28]}, 422, "numbers"),
    ({"images": [[[True] * 28] * 28]}, 422, "numbers"),
    ({"images": []}, 422, "shape"),
    ({"images": [0.5]}, 422, "shape"),
    ({"images": IMAGES.repeat(1, 3, 1, 1).mul(torch.tensor([1.0, 0.5, 0.2]).view(1, 3, 1, 1)).tolist()}, 422, "grey"),
    ({"images": torch.rand(1, 2, 28, 28).tolist()}, 422, "channels"),
    ({"images": [], "array": {}}, 422, "exactly one"),
    ({}, 422, "exactly one"),
    ([1, 2], 422, "object"),
    ({"array": {"shape": [1, 28, 28], "data": "!!"}}, 400, "base64"),
    ({"array": {"shape": [1, 28, 28], "data": "AAAA"}}, 422, "bytes"),
    ({"array": {"shape": [1, 28, 28], "dtype": "float64", "data": ""}}, 422, "float32"),
    ({"array": {"shape": [1, -28, 28], "data": ""}}, 422, "non-negative"),
]


@pytest.mark.parametrize(("payload", "status", "fragment"), BAD_JSON)
def test_bad_json_batches_get_clear_4xx(tmp_path: Path, payload: object, status: int, fragment: str) -> None:
    response = post_json(make_client(tmp_path), payload)
    assert response.status_code == status and fragment in response.json()["detail"], response.text


def test_bad_bodies_and_files(tmp_path: Path) -> None:
    client = make_client(tmp_path, max_request_bytes=100_000, max_batch=4, max_side=64)
    cases = [
        (client.post("/v1/predict", content=b"{not json", headers={**AUTH, "content-type": "application/json"}), 400),
        (client.post("/v1/predict", content=b'{"images": [[[NaN]]]}', headers={**AUTH, "content-type": "application/json"}), 422),
        (client.post("/v1/predict", content=json.dumps({"images": [[[float("inf")] * 28] * 28]}).encode(), headers={**AUTH, "content-type": "application/json"}), 422),
        (client.post("/v1/predict", content=b"x", headers={**AUTH, "content-type": "text/plain"}), 415),
        (client.post("/v1/predict", content=b"0" * 200_000, headers={**AUTH, "content-type": "application/json"}), 413),
        (post_json(client, {"images": torch.rand(5, 28, 28).tolist()}), 413),
        (client.post("/v1/predict", files={"file": ("x.png", png_bytes(np.zeros((28, 28), np.uint8))[:40])}, headers=AUTH), 400),
        (client.post("/v1/predict", files={"file": ("x.gif", b"GIF89a....")}, headers=AUTH), 415),
        (client.post("/v1/predict", files={"file": ("x.png", b"")}, headers=AUTH), 422),
        (client.post("/v1/predict", files={"other": ("x.png", b"abc")}, headers=AUTH), 422),
        (client.post("/v1/predict", files={"file": ("x.png", png_bytes(np.zeros((100, 100), np.uint8)))}, headers=AUTH), 413),
        (client.post("/v1/predict", files={"file": ("x.png", png_bytes(np.zeros((32, 32), np.uint8)))}, headers=AUTH), 422),
        (client.post("/v1/predict", files={"file": ("x.png", png_bytes(np.zeros((28, 28, 4), np.uint8)))}, headers=AUTH), 422),
        (client.post("/v1/predict", files={"file": ("x.dcm", dicom_bytes(np.zeros((28, 28), np.uint16))[:152])}, headers=AUTH), 400),
        (client.post("/v1/predict", files={"file": ("x.dcm", b"\0" * 128 + b"DICM" + b"\xff" * 50)}, headers=AUTH), 400),
    ]
    for i, (response, status) in enumerate(cases):
        assert response.status_code == status, (i, response.text)
        assert response.json()["detail"], i


def test_budget_gives_429_and_no_prediction(tmp_path: Path) -> None:
    client = make_client(tmp_path, limiter=QueryLimiter(budget=7))
    assert post_json(client, {"images": IMAGES.tolist()}).json()["queries_remaining"] == 2
    response = post_json(client, {"images": IMAGES[:3].tolist()})
    assert response.status_code == 429 and "labels" not in response.json() and "budget" in response.json()["detail"]
    assert post_json(client, {"images": IMAGES[:2].tolist()}).status_code == 200  # exactly spends the budget
    assert post_json(client, {"images": IMAGES[:1].tolist()}).status_code == 429
    assert post_json(client, {"images": IMAGES.tolist()}, {"X-API-Key": OTHER_KEY}).status_code == 200  # per key
    records = read_audit(tmp_path / "audit.jsonl")
    assert [r["status"] for r in records] == [200, 429, 200, 429, 200]
    assert [r.get("n") for r in records] == [5, 3, 2, None, 5]  # the spent key is refused before its body is read


def test_rate_limit_gives_429_with_retry_after(tmp_path: Path) -> None:
    now = [0.0]
    client = make_client(tmp_path, limiter=QueryLimiter(rate=2.0, burst=5, clock=lambda: now[0]))
    assert post_json(client, {"images": IMAGES.tolist()}).status_code == 200
    response = post_json(client, {"images": IMAGES[:3].tolist()})
    # refused before the body is read, so Retry-After is the wait for one query (0.5 s, rounded up)
    assert response.status_code == 429 and response.headers["Retry-After"] == "1" and "labels" not in response.json()
    now[0] = 1.5
    assert post_json(client, {"images": IMAGES[:3].tolist()}).status_code == 200
    now[0] = 10.0  # a full bucket: the empty one would refuse (429) before reading the body
    assert post_json(client, {"images": torch.rand(6, 28, 28).tolist()}).status_code == 413  # larger than the burst


class FakeDetector:
    """Throttles a key once it has sent ``throttle_at`` images, blocks it at ``block_at``."""

    def __init__(self, throttle_at: int = 6, block_at: int = 11) -> None:
        self.seen: dict[str, int] = {}
        self.throttle_at, self.block_at = throttle_at, block_at

    def observe(self, client: str, images: torch.Tensor) -> Action:
        assert images.shape[1:] == (1, 28, 28)
        self.seen[client] = self.seen.get(client, 0) + len(images)
        if self.seen[client] >= self.block_at:
            return Action("block", "near-duplicate queries")
        if self.seen[client] >= self.throttle_at:
            return Action("throttle", "suspicious stream", retry_after=3.0)
        return Action()


def test_detector_can_throttle_then_block_a_key(tmp_path: Path) -> None:
    detector = FakeDetector()
    client = make_client(tmp_path, detector=detector)
    assert post_json(client, {"images": IMAGES.tolist()}).status_code == 200
    throttled = post_json(client, {"images": IMAGES[:1].tolist()})
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "3"
    blocked = post_json(client, {"images": IMAGES.tolist()})
    assert blocked.status_code == 403 and "near-duplicate" in blocked.json()["detail"]
    assert post_json(client, {"images": IMAGES[:1].tolist()}).status_code == 403  # stays blocked
    assert detector.seen[next(iter(detector.seen))] == 11  # blocked keys are not even shown to the detector
    assert post_json(client, {"images": IMAGES.tolist()}, {"X-API-Key": OTHER_KEY}).status_code == 200
    assert client.get("/v1/model", headers=AUTH).json()["detector"] is True


def test_remote_classifier_counts_queries_like_the_server(tmp_path: Path) -> None:
    client = make_client(tmp_path, limiter=QueryLimiter(budget=10), allow_scores=True)
    remote = RemoteClassifier("http://testserver", KEY, batch_size=2, http=client)
    labels = remote.labels(IMAGES)
    assert labels.dtype == torch.long and labels.tolist() == expected_labels(IMAGES)
    assert remote.queries == 5 and remote.requests == 3
    assert remote.scores(IMAGES[:2]).shape == (2, 2) and remote.info()["budget"] == 10
    with pytest.raises(RateLimited) as err:
        remote.labels(IMAGES)
    assert err.value.retry_after is None and remote.queries == 9  # one more batch of 2 answered, then the budget ran out
    records = [r for r in read_audit(tmp_path / "audit.jsonl") if r["path"] == "/v1/predict"]
    assert sum(r["n"] for r in records if r["status"] == 200) == remote.queries == 9 and records[-1]["status"] == 429
    with pytest.raises(AuthenticationError):
        RemoteClassifier("http://testserver", "wrong-key-0123456789", http=client).labels(IMAGES)
    with pytest.raises(ValueError):
        remote.labels(IMAGES[0])


def test_remote_classifier_waits_on_rate_limit_and_reports_blocks(tmp_path: Path) -> None:
    clock = [0.0]
    client = make_client(tmp_path, limiter=QueryLimiter(rate=1000.0, burst=2, clock=lambda: clock[0]),
                         detector=FakeDetector(throttle_at=100, block_at=4))
    remote = RemoteClassifier("http://testserver", KEY, batch_size=2, http=client)
    remote.labels(IMAGES[:2])
    with pytest.raises(RateLimited):
        remote.labels(IMAGES[:2])
    clock[0] = 1.0
    with pytest.raises(Forbidden):
        remote.labels(IMAGES[:2])


def test_build_server_app_from_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from conftest import tiny_model
    from medshield.server import service as api
    from medshield.defenses.inference import DefenseSpec
    from medshield.errors import MedShieldError
    from medshield.models import create_model, save_run

    model = create_model(name="smallcnn", in_channels=1, num_classes=2, image_size=28)
    save_run(tmp_path / "run", model, {"data": {"classes": ["normal", "pneumonia"]}})
    monkeypatch.setenv("MEDSHIELD_API_KEYS", KEY)
    app = api.build_server_app(tmp_path / "run", budget=3, audit_log=tmp_path / "a.jsonl")
    info = TestClient(app).get("/v1/model", headers=AUTH).json()
    assert info["model"] == "smallcnn" and info["budget"] == 3 and info["classes"] == ["normal", "pneumonia"]
    with pytest.raises(MedShieldError, match="did you mean .rnd."):
        api.build_server_app(tmp_path / "run", defense=DefenseSpec.parse("rnx"))
    with pytest.raises(MedShieldError, match="per worker"):
        api.serve(tmp_path / "run", workers=2, budget=10)
    assert tiny_model  # fixture helper import used by other tests
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["name"] == "smallcnn"


@pytest.mark.parametrize(("on_flag", "status"), [("block", 403), ("throttle", 429), ("log", 200)])
def test_stream_detector_flag_policy(tmp_path: Path, on_flag: str, status: int) -> None:
    from medshield.defenses.detection import StreamDetector

    client = make_client(tmp_path, detector=StreamDetector(k=3, threshold=0.05), on_flag=on_flag)
    benign = torch.rand(6, 28, 28, generator=torch.Generator().manual_seed(3))
    assert post_json(client, {"images": benign.tolist()}).status_code == 200
    probe = IMAGES[0, 0] + 0.001 * torch.rand(8, 28, 28, generator=torch.Generator().manual_seed(4))
    response = post_json(client, {"images": probe.clamp(0, 1).tolist()})  # an attack-like near-duplicate stream
    assert response.status_code == status, response.text
    if status == 429:
        assert response.headers["Retry-After"] == "60"
    assert post_json(client, {"images": benign.tolist()}, {"X-API-Key": OTHER_KEY}).status_code == 200


def test_served_defense_from_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from medshield.server import service as api
    from medshield.defenses.inference import DefenseSpec
    from medshield.errors import MedShieldError
    from medshield.models import create_model, save_run

    save_run(tmp_path / "run", create_model(name="smallcnn", in_channels=1, num_classes=2, image_size=28))
    monkeypatch.setenv("MEDSHIELD_API_KEYS", KEY)
    app = api.build_server_app(tmp_path / "run", defense=DefenseSpec.parse("dnd:m=0.05:n=0.5"),
                               detector="stream", allow_scores=True)
    client = TestClient(app)
    info = client.get("/v1/model", headers=AUTH).json()
    assert info["defenses"] == ["dnd"] and info["detector"] is True
    a, b = (post_json(client, {"images": IMAGES.tolist()}).json()["scores"] for _ in range(2))
    assert a != b  # DND answers the same query with fresh noise
    with pytest.raises(MedShieldError, match="KEY=NUMBER"):
        DefenseSpec.parse("dnd:m")
    with pytest.raises(MedShieldError, match="unknown detector"):
        api.make_detector("strem")
