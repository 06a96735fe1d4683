"""Remote model sources: ``oip`` (Open Inference Protocol / KServe v2 REST: KServe, MLServer, Triton),
``medshield_api`` (a ``medshield serve`` deployment) and ``http`` (any JSON API, by template).

None of them loads code or weights: the model stays on the server, MedShield sends images and reads
answers. Gradients are never available (white-box attacks are skipped; transfer and label-only
attacks run); ``returns: labels`` declares a label-only endpoint. The card's ``input`` section says
what the endpoint receives (MedShield normalises before sending); ``output`` what it answers.

    model: {format: oip, url: "http://127.0.0.1:8080", name: pneumonia, output_name: logits}
    input: {size: 28, channels: 1, mean: [0.5], std: [0.5]}
    output: {kind: logits, task: binary, classes: [normal, pneumonia]}

Secrets never go in a card: headers may say ``${VAR}`` (read from the environment), and the
MedShield API key is read from the variable ``api_key_env`` names.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from medshield.targets.card import CardError, TargetCard
from medshield.targets.http import RemoteError
from medshield.targets.json_api import JsonApiModel
from medshield.targets.medshield_api import RemoteClassifier
from medshield.targets.oip import OIPModel
from medshield.targets.remote import RemoteModel, RemoteNet
from medshield.targets.source import LoadedNet, register_source


class _RemoteOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str
    returns: Literal["scores", "labels"] = Field("scores", description="labels: a label-only endpoint")
    timeout: float = Field(30.0, gt=0, description="seconds per request")
    batch_size: int = Field(64, ge=1, description="images per request")
    retries: int = Field(0, ge=0, description="extra attempts when the connection cannot be opened (never after sending)")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {value!r}")
        return value


class OIPOptions(_RemoteOptions):
    """``model.*`` fields of ``format: oip``."""

    name: str = Field(description="the model's name on the server (/v2/models/{name})")
    version: str | None = None
    input_name: str | None = Field(None, description="input tensor name (default: the first in the model's metadata)")
    datatype: Literal["FP32", "FP64", "FP16"] = "FP32"
    layout: Literal["NCHW", "NHWC", "flat"] = "NCHW"
    output_name: str | None = Field(None, description="output tensor to read (default: the first returned)")
    headers: dict[str, str] = Field(default_factory=dict, description="extra HTTP headers; ${VAR} reads the environment")


class HttpOptions(_RemoteOptions):
    """``model.*`` fields of ``format: http`` (a JSON API described by a template)."""

    request: Any = Field(default_factory=lambda: {"instances": "$images"},
                         description='JSON body template; "$images" is the batch, "$n" its size')
    response: str = Field("predictions", description="dotted path to the outputs in the answer (a.b.0.c)")
    layout: Literal["NCHW", "NHWC", "flat"] = "NCHW"
    headers: dict[str, str] = Field(default_factory=dict, description="extra HTTP headers; ${VAR} reads the environment")


class MedShieldApiOptions(_RemoteOptions):
    """``model.*`` fields of ``format: medshield_api`` (a ``medshield serve`` deployment)."""

    returns: Literal["scores", "labels"] = Field("labels", description="scores need `medshield serve --allow-scores`")
    api_key_env: str = Field("MEDSHIELD_API_KEY", description="environment variable holding the API key")
    wait_on_rate_limit: bool = False


def _width(card: TargetCard, label_only: bool) -> int | None:
    """Output width without a probe where the card tells it (a probe would cost a query)."""
    out = card.output
    if out.outputs is not None:
        return out.outputs
    if out.task != "binary":
        return len(out.classes)
    return 2 if label_only else None


def _loaded(card: TargetCard, remote: RemoteModel, notes: dict[str, Any]) -> LoadedNet:
    label_only = remote.output_kind == "labels"
    width = _width(card, label_only)
    net = RemoteNet(remote, width, card.output.kind, card.output.task)
    access = "labels only" if label_only else "scores"
    return LoadedNet(net=net, gradients=False, files=[], remote=True, num_outputs=width,
                     notes={"endpoint": remote.url, "access": access, **notes})


def _connect(card: TargetCard, remote: RemoteModel, what: str) -> dict[str, Any]:
    """Readiness and metadata, with errors that name the card and field (``what`` for a 404)."""
    try:
        if not remote.ready():
            raise CardError(f"{card.where()}: model.url: {remote.url} is up but not ready to serve")
        return remote.metadata()
    except RemoteError as exc:
        remote.close()
        field = what if exc.status == 404 else "url"
        raise CardError(f"{card.where()}: model.{field}: {exc}") from None


@register_source("oip", options=OIPOptions,
                 description="Open Inference Protocol (KServe v2 REST) endpoint: KServe, MLServer, Triton")
def load_oip(card: TargetCard, device: torch.device) -> LoadedNet:
    o = card.source_options(OIPOptions)
    kind = "labels" if o.returns == "labels" else card.output.kind
    remote = OIPModel(o.url, o.name, version=o.version, input=o.input_name, datatype=o.datatype, layout=o.layout,
                      output=o.output_name, output_kind=kind, headers=o.headers, timeout=o.timeout,
                      batch_size=o.batch_size, retries=o.retries)
    meta = _connect(card, remote, "name")
    return _loaded(card, remote, {"protocol": "open inference protocol v2 (REST)", "input_name": remote.input_name,
                                  "metadata": meta})


@register_source("http", options=HttpOptions,
                 description="any JSON API: a request template with \"$images\" and a dotted path to the outputs")
def load_http(card: TargetCard, device: torch.device) -> LoadedNet:
    o = card.source_options(HttpOptions)
    kind = "labels" if o.returns == "labels" else card.output.kind
    remote = JsonApiModel(o.url, request=o.request, response=o.response, layout=o.layout, output_kind=kind,
                          headers=o.headers, timeout=o.timeout, batch_size=o.batch_size, retries=o.retries)
    return _loaded(card, remote, {"protocol": "json template", "response_path": o.response})


@register_source("medshield_api", options=MedShieldApiOptions,
                 description="a `medshield serve` deployment (API key from $MEDSHIELD_API_KEY or api_key_env)")
def load_medshield_api(card: TargetCard, device: torch.device) -> LoadedNet:
    o = card.source_options(MedShieldApiOptions)
    key = os.environ.get(o.api_key_env, "")
    if not key:
        raise CardError(f"{card.where()}: model.api_key_env: set the API key in ${o.api_key_env}")
    remote = RemoteClassifier(o.url, key, batch_size=o.batch_size, timeout=o.timeout, retries=o.retries,
                              wait_on_rate_limit=o.wait_on_rate_limit, returns=o.returns)
    info = _connect(card, remote, "url")
    if o.returns == "scores" and not info.get("scores_exposed"):
        remote.close()
        raise CardError(f"{card.where()}: model.returns: {o.url} does not expose scores (serve it with "
                        "--allow-scores, or say returns: labels)")
    shape = info.get("input_shape") or []
    if shape and list(shape) != [card.input.channels, card.input.size, card.input.size]:
        remote.close()
        raise CardError(f"{card.where()}: input: the server takes {shape} images, the card says "
                        f"{[card.input.channels, card.input.size, card.input.size]}")
    return _loaded(card, remote, {"protocol": "medshield api v1", "server": info})
