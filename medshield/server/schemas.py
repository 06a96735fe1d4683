"""Pydantic schemas of the HTTP API (they also document it in the OpenAPI document)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ArrayPayload(BaseModel):
    """A compact exact batch: float32 little-endian bytes in base64."""

    model_config = ConfigDict(extra="forbid")
    shape: list[int] = Field(description="[N,C,H,W] or [N,H,W] (grey)", min_length=3, max_length=4)
    dtype: Literal["float32"] = "float32"
    data: str = Field(description="base64 of the float32 little-endian pixel values, C order")


class BatchRequest(BaseModel):
    """A batch of images with pixel values in [0, 1]: send exactly one of ``images`` or ``array``."""

    model_config = ConfigDict(extra="forbid")
    images: list[list] | None = Field(None, description="nested float lists [N,C,H,W] or [N,H,W] in [0, 1]")
    array: ArrayPayload | None = None


class Prediction(BaseModel):
    labels: list[int] = Field(description="predicted class index per image")
    classes: list[str] = Field(description="predicted class name per image")
    scores: list[list[float]] | None = Field(None, description="class probabilities per image, when exposed")
    queries_used: int = Field(description="queries this key has made, this request included")
    queries_remaining: int | None = Field(None, description="queries left in this key's budget (null: unlimited)")


class ModelInfo(BaseModel):
    model: str
    input_shape: list[int] = Field(description="[C, H, W] the model takes; other sizes are rejected (422)")
    channels: int
    image_size: int
    classes: list[str]
    defenses: list[str]
    scores_exposed: bool
    max_batch: int
    max_request_bytes: int
    max_image_side: int
    budget: int | None = Field(None, description="total queries per key (per worker process)")
    rate: float | None = Field(None, description="sustained queries per second per key (per worker process)")
    detector: bool = False


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class ErrorBody(BaseModel):
    detail: str
