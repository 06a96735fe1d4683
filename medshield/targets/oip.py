"""A model behind the Open Inference Protocol (KServe v2 REST), as spoken by KServe, MLServer and Triton.

Calls (https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/):
``GET /v2/health/ready`` (readiness), ``GET /v2/models/{name}[/versions/{v}]`` (metadata) and
``POST /v2/models/{name}[/versions/{v}]/infer`` with one input tensor holding a whole batch::

    {"inputs": [{"name": "input", "shape": [n, 1, 28, 28], "datatype": "FP32", "data": [...]}],
     "outputs": [{"name": "logits"}]}

The answer's ``outputs`` entry named ``output`` (or the first) is read as ``[n, ...]``. Example::

    model = OIPModel("http://127.0.0.1:8080", "pneumonia", output="logits", batch_size=128)
    model.ready(); labels = model.labels(images); model.queries  # images answered
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from medshield.errors import MedShieldError
from medshield.targets.http import HttpTransport, RemoteError
from medshield.targets.remote import Layout, OutputKind, RemoteModel, numeric_array

DATATYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16}


class OIPModel(RemoteModel):
    """Open Inference Protocol v2 REST client for one model (optionally one ``version``).

    ``input``: the input tensor's name (default: the first input in the model's metadata, else
    ``"input"``); ``datatype``: FP32, FP64 or FP16; ``output``: the output tensor to read (default:
    the first one returned); ``headers``: e.g. ``{"Authorization": "Bearer ${TOKEN}"}``.
    """

    format = "oip"

    def __init__(self, url: str, model: str, version: str | None = None, input: str | None = None,
                 datatype: str = "FP32", layout: Layout = "NCHW", output: str | None = None,
                 output_kind: OutputKind = "logits", headers: Mapping[str, str] | None = None,
                 timeout: float = 30.0, batch_size: int = 64, retries: int = 0, http: Any = None) -> None:
        if datatype not in DATATYPES:
            raise MedShieldError(f"OIP datatype must be one of {', '.join(DATATYPES)}, got {datatype!r}")
        if not model:
            raise MedShieldError("an OIP target needs the model's name (model.name in the card)")
        super().__init__(HttpTransport(url, headers, timeout, retries, http), batch_size, layout, output_kind)
        self.model, self.version, self.datatype, self.output = model, version, datatype, output
        self._input = input
        self._metadata: dict[str, Any] | None = None
        base = f"/v2/models/{model}" + (f"/versions/{version}" if version else "")
        self._model_path, self._infer_path = base, base + "/infer"

    def ready(self) -> bool:
        return self.transport.get_status("/v2/health/ready") == 200

    def metadata(self) -> dict[str, Any]:
        """The model's metadata (``name``, ``versions``, ``platform``, ``inputs``, ``outputs``); cached."""
        if self._metadata is None:
            meta = self.transport.get(self._model_path)
            if not isinstance(meta, dict):
                raise RemoteError(0, f"malformed response from GET {self.transport.url}{self._model_path}: "
                                     "metadata is not a JSON object")
            self._metadata = meta
        return self._metadata

    @property
    def input_name(self) -> str:
        if self._input is None:
            inputs = self.metadata().get("inputs") or []
            self._input = str(inputs[0].get("name", "input")) if inputs and isinstance(inputs[0], dict) else "input"
        return self._input

    def request_body(self, batch: np.ndarray) -> dict[str, Any]:
        """The infer request for one batch (public so tests and docs can show it)."""
        body: dict[str, Any] = {"inputs": [{
            "name": self.input_name, "shape": list(batch.shape), "datatype": self.datatype,
            "data": batch.astype(DATATYPES[self.datatype], copy=False).reshape(-1).tolist()}]}
        if self.output:
            body["outputs"] = [{"name": self.output}]
        return body

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        answer = self.transport.post(self._infer_path, self.request_body(batch), rows=batch.shape[0])
        return self.parse_response(answer)

    def parse_response(self, answer: Any) -> np.ndarray:
        """The chosen output tensor of an infer response, reshaped to its declared ``shape``."""
        where = f"POST {self.transport.url}{self._infer_path}"
        outputs = answer.get("outputs") if isinstance(answer, dict) else None
        if not isinstance(outputs, list) or not outputs or not all(isinstance(o, dict) for o in outputs):
            raise RemoteError(0, f"malformed response from {where}: no 'outputs' list")
        if self.output:
            named = [o for o in outputs if o.get("name") == self.output]
            if not named:
                have = ", ".join(str(o.get("name")) for o in outputs)
                raise RemoteError(0, f"malformed response from {where}: no output named {self.output!r} (got {have})")
            tensor = named[0]
        else:
            tensor = outputs[0]
        data, shape = numeric_array(tensor.get("data"), where).reshape(-1), tensor.get("shape")
        if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape) \
                or int(np.prod(shape)) != data.size:
            raise RemoteError(0, f"malformed response from {where}: output shape {shape} does not hold "
                                 f"{data.size} values")
        return data.reshape(shape)
