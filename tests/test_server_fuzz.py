"""Fuzzing the HTTP API with hypothesis through the in-process app: no input may produce a 5xx."""

from __future__ import annotations

import base64
import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from medshield.defenses.limits import QueryLimiter
from server_helpers import AUTH, dicom_bytes, make_client, png_bytes

pytest.importorskip("fastapi")
# MEDSHIELD_FUZZ_EXAMPLES=2000 for a long random run; CI uses a fixed (derandomized) 150 per test
EXAMPLES = int(os.environ.get("MEDSHIELD_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 150, suppress_health_check=list(HealthCheck))

scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=4)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(["images", "array", "shape", "dtype", "data", "x"]) | st.text(max_size=4), inner, max_size=3),
    max_leaves=40)
shapes = st.tuples(st.integers(0, 3), st.sampled_from([1, 2, 3, 4]), st.sampled_from([1, 27, 28]), st.sampled_from([28, 29]))
pixel_floats = st.floats(-0.5, 1.5) | st.sampled_from([0.0, 1.0, float("nan"), float("inf"), -float("inf"), 1e300])
near_valid = shapes.flatmap(lambda s: arrays(np.float64, s, elements=pixel_floats)).map(lambda a: {"images": a.tolist()})
packed = st.fixed_dictionaries({"array": st.fixed_dictionaries({
    "shape": st.lists(st.integers(-2, 2**40) | st.sampled_from([28, 1, 0]) | st.floats(0, 30) | st.text(max_size=2), max_size=5),
    "dtype": st.sampled_from(["float32", "float64", 1]),
    "data": st.binary(max_size=4000).map(lambda b: base64.b64encode(b).decode()) | st.text(max_size=20),
})})


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory):
    c = make_client(tmp_path_factory.mktemp("fuzz"), limiter=QueryLimiter(rate=1e6, burst=1e6), max_batch=2,
                    max_request_bytes=200_000)
    c.__enter__()
    yield c
    c.__exit__(None, None, None)


def assert_no_5xx(response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert isinstance(response.json()["detail"], (str, list))


@FUZZ
@given(payload=json_values | near_valid | packed)
def test_fuzz_json_bodies(client, payload: object) -> None:
    body = json.dumps(payload, allow_nan=True).encode()
    assert_no_5xx(client.post("/v1/predict", content=body, headers={**AUTH, "content-type": "application/json"}))


@FUZZ
@given(body=st.binary(max_size=3000), ctype=st.sampled_from(
    ["application/json", "multipart/form-data", "multipart/form-data; boundary=xyz", "text/plain", "", "image/png"]))
def test_fuzz_raw_bodies(client, body: bytes, ctype: str) -> None:
    assert_no_5xx(client.post("/v1/predict", content=body, headers={**AUTH, "content-type": ctype}))


VALID_FILES = [png_bytes(np.full((28, 28), 100, np.uint8)), png_bytes(np.full((28, 28), 100, np.uint8), fmt="JPEG"),
               dicom_bytes(np.full((28, 28), 1000, np.uint16))]


@FUZZ
@given(base=st.sampled_from(VALID_FILES), flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
       cut=st.none() | st.integers(0, 2000))
def test_fuzz_mutated_image_files(client, base: bytes, flips: list[tuple[int, int]], cut: int | None) -> None:
    data = bytearray(base)
    for pos, value in flips:
        data[pos % len(data)] = value
    blob = bytes(data[:cut] if cut is not None else data)
    assert_no_5xx(client.post("/v1/predict", files={"file": ("x", blob)}, headers=AUTH))


@FUZZ
@given(key=st.text(max_size=40).filter(lambda k: "\n" not in k and "\r" not in k))
def test_fuzz_keys_get_401(client, key: str) -> None:
    try:
        response = client.get("/v1/model", headers={"X-API-Key": key})
    except UnicodeEncodeError:  # httpx refuses non-ASCII header values before sending
        return
    assert response.status_code == 401
