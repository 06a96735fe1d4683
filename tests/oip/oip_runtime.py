"""A custom MLServer runtime for the tests: a TorchScript classifier that counts every image it answers.

It runs inside MLServer's own virtual environment (``.venv-oip``), never imports medshield, and
appends one line per answered request (the number of images) to ``parameters.extra.count_file``:
the server's own query count, compared with MedShield's by the tests.
"""

from __future__ import annotations

import torch
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class CountingTorchScript(MLModel):
    """Input: one FP32 tensor ``[n, C, H, W]``; output ``logits`` ``[n, K]``."""

    async def load(self) -> bool:
        self.model = torch.jit.load(await get_model_uri(self._settings), map_location="cpu").eval()
        self.count_file = self._settings.parameters.extra["count_file"]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = torch.from_numpy(NumpyCodec.decode_input(payload.inputs[0]).copy())
        with torch.no_grad():
            logits = self.model(x).numpy()
        with open(self.count_file, "a") as f:
            f.write(f"{x.shape[0]}\n")
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("logits", logits)])
