"""The FastAPI app: ``create_app(model, keys, ...)`` serves any ``nn.Module`` (defended or not).

>>> app = create_app(model, KeyStore(["a-long-secret-key-123"]), ServeConfig(image_size=28))
>>> # uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from torch import nn

from medshield.defenses.limits import LimitDecision, QueryLimiter
from medshield.errors import MedShieldError
from medshield.models.bounded import predict_labels, probabilities
from medshield.server.audit import AuditLog
from medshield.server.auth import KeyStore
from medshield.server.decode import InputError, InputSpec, decode_image_file, decode_json_batch
from medshield.server.schemas import BatchRequest, ErrorBody, Health, ModelInfo, Prediction

log = logging.getLogger(__name__)
KEY_HEADER = "X-API-Key"


@dataclass
class ServeConfig:
    """What the deployment serves and allows (no secrets here)."""

    model_name: str = "model"
    channels: int = 1
    image_size: int = 28
    class_names: list[str] = field(default_factory=lambda: ["0", "1"])
    defenses: list[str] = field(default_factory=list)
    allow_scores: bool = False
    max_batch: int = 256
    max_side: int = 4096
    max_request_bytes: int = 8 << 20
    audit_log: str | None = None
    on_flag: str = "block"  # what a detector's ``flagged`` verdict does: block, throttle or log
    throttle_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.on_flag not in ("block", "throttle", "log"):
            raise MedShieldError(f"on_flag must be block, throttle or log, got {self.on_flag!r}")


@dataclass(frozen=True)
class Action:
    """A verdict a custom detector may return: ``allow``, ``throttle`` (429 for ``retry_after`` s) or
    ``block`` (403 from now on)."""

    action: str = "allow"
    reason: str = ""
    retry_after: float | None = None


class Detector(Protocol):
    """A stateful attack-stream detector: sees every admitted batch of a key before it is answered.
    Its verdict either says ``action`` ("allow", "throttle", "block", with optional ``reason`` and
    ``retry_after``) or ``flagged`` (bool), which the deployment's ``on_flag`` policy turns into an
    action (e.g. :class:`medshield.defenses.detection.StreamDetector`)."""

    def observe(self, client: str, images: torch.Tensor) -> Any: ...


class Denied(Exception):
    """A refused request: status, message and extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class Service:
    """The state behind the routes: model, lock, keys, limits, detector and audit log."""

    def __init__(self, model: nn.Module, keys: KeyStore, config: ServeConfig,
                 limiter: QueryLimiter | None, detector: Detector | None) -> None:
        self.model = model.eval()
        self.keys, self.config = keys, config
        self.limiter = limiter or QueryLimiter()
        self.detector = detector
        self.spec = InputSpec(config.channels, config.image_size, config.max_batch, config.max_side)
        self.audit = AuditLog(config.audit_log)
        self.lock = threading.Lock()
        self.blocked: set[str] = set()

    def infer(self, images: torch.Tensor) -> tuple[list[int], list[list[float]] | None]:
        """One forward pass under the model lock (wrappers may hold RNG state), eval + inference mode."""
        with self.lock, torch.inference_mode():
            self.model.eval()
            logits = self.model(images)
        labels = predict_labels(logits).tolist()
        scores = probabilities(logits).tolist() if self.config.allow_scores else None
        return labels, scores

    def admit(self, key_id: str, images: torch.Tensor) -> LimitDecision:
        """Budget and rate first (a denied request costs nothing), then the attack-stream detector."""
        if key_id in self.blocked:
            raise Denied(403, "this API key has been blocked by the attack-stream detector")
        decision = self.limiter.acquire(key_id, len(images))
        if not decision.allowed:
            headers = {"X-Queries-Remaining": str(decision.remaining)} if decision.remaining is not None else {}
            if decision.retry_after is not None:
                headers["Retry-After"] = str(max(1, int(decision.retry_after + 0.999)))
            raise Denied(413 if decision.reason == "burst" else 429, decision.message(), headers)
        if self.detector is not None:
            action, reason, retry = self.interpret(key_id, self.detector.observe(key_id, images))
            if action == "block":
                self.blocked.add(key_id)
                raise Denied(403, f"blocked by the attack-stream detector: {reason}".rstrip(": "))
            if action == "throttle":
                wait = max(1, int((retry or self.config.throttle_seconds) + 0.999))
                raise Denied(429, f"throttled by the attack-stream detector: {reason}".rstrip(": "),
                             {"Retry-After": str(wait)})
        return decision

    def interpret(self, key_id: str, verdict: Any) -> tuple[str, str, float | None]:
        """(action, reason, retry_after) from an ``action`` verdict or a ``flagged`` one."""
        action = getattr(verdict, "action", None)
        if action is not None:
            if action not in ("allow", "throttle", "block"):
                raise RuntimeError(f"detector returned unknown action {action!r}")
            return action, str(getattr(verdict, "reason", "")), getattr(verdict, "retry_after", None)
        if getattr(verdict, "flagged", False):
            at = getattr(verdict, "flagged_at", None)
            reason = "near-duplicate query stream" + (f" (flagged at query {at})" if at is not None else "")
            policy = self.config.on_flag
            if policy == "log":
                log.warning("detector flagged key %s: %s", key_id, reason)
                return "allow", reason, None
            return policy, reason, None
        return "allow", "", None

    def answer(self, key_id: str, images: torch.Tensor) -> tuple[LimitDecision, tuple[list[int], list[list[float]] | None]]:
        """Admit, then infer (in a worker thread: a detector or model may take a while)."""
        decision = self.admit(key_id, images)
        return decision, self.infer(images)

    def info(self) -> ModelInfo:
        c = self.config
        return ModelInfo(model=c.model_name, input_shape=list(self.spec.shape), channels=c.channels,
                         image_size=c.image_size, classes=c.class_names, defenses=c.defenses or ["none"],
                         scores_exposed=c.allow_scores, max_batch=c.max_batch, max_request_bytes=c.max_request_bytes,
                         max_image_side=c.max_side, budget=self.limiter.budget, rate=self.limiter.rate,
                         detector=self.detector is not None)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over ``limit`` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise InputError(413, f"request body exceeds the limit of {limit} bytes")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise InputError(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # let request.form() parse what was read
    return body


async def decode_request(request: Request, service: Service) -> torch.Tensor:
    body = await read_body(request, service.config.max_request_bytes)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            raise InputError(400, "the body is not valid JSON") from None
        return await run_in_threadpool(decode_json_batch, payload, service.spec)
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=4, max_part_size=service.config.max_request_bytes)
        except Exception as exc:  # starlette raises several parser errors for malformed multipart
            raise InputError(400, f"malformed multipart body: {exc}") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise InputError(422, 'multipart requests need the image in the file field "file"')
        data = await upload.read()
        return await run_in_threadpool(decode_image_file, data, service.spec)
    raise InputError(415, "send application/json (a batch) or multipart/form-data (one image in field 'file')")


PREDICT_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/BatchRequest"}},
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary", "description": "one PNG, JPEG or DICOM image"}}}},
    },
}
ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 403, 413, 415, 422, 429)}


def create_app(model: nn.Module, keys: KeyStore, config: ServeConfig | None = None,
               limiter: QueryLimiter | None = None, detector: Detector | None = None) -> FastAPI:
    """A FastAPI app serving ``model`` (an ``nn.Module`` taking [N,C,H,W] pixels in [0, 1] and returning
    logits; defense wrappers included) behind API keys, query limits, an optional stateful detector
    and a JSON-lines audit log."""
    service = Service(model, keys, config or ServeConfig(), limiter, detector)
    app = FastAPI(title="MedShield diagnostic service", version="1", description=__doc__,
                  openapi_tags=[{"name": "diagnosis"}])
    app.state.service = service

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.exception_handler(Denied)
    async def denied(request: Request, exc: Denied) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=exc.headers)

    def authenticate(request: Request) -> str:
        key_id = service.keys.identify(request.headers.get(KEY_HEADER))
        if key_id is None:
            service.audit.write(key_id=None, path=request.url.path, status=401,
                                client=request.client.host if request.client else None)
            raise Denied(401, f"missing or invalid API key (send it in the {KEY_HEADER} header)",
                         {"WWW-Authenticate": KEY_HEADER})
        return key_id

    @app.get("/v1/health", response_model=Health, tags=["diagnosis"])
    def health() -> Health:
        return Health()

    @app.get("/v1/model", response_model=ModelInfo, responses={401: ERRORS[401]}, tags=["diagnosis"])
    def model_info(key_id: str = Depends(authenticate)) -> ModelInfo:
        return service.info()

    @app.post("/v1/predict", response_model=Prediction, responses=ERRORS, tags=["diagnosis"],
              openapi_extra={"requestBody": PREDICT_BODY})
    async def predict(request: Request, key_id: str = Depends(authenticate)) -> Prediction:
        """Labels for one image (multipart ``file``: PNG, JPEG, DICOM) or a JSON batch in [0, 1]; a
        batch of N images costs N queries."""
        start, n, status, digest = time.perf_counter(), None, 200, None
        try:
            images = await decode_request(request, service)
            n, digest = len(images), hashlib.sha256(images.numpy().tobytes()).hexdigest()[:16]
            decision, (labels, scores) = await run_in_threadpool(service.answer, key_id, images)
            names = [service.config.class_names[i] if i < len(service.config.class_names) else str(i) for i in labels]
            return Prediction(labels=labels, classes=names, scores=scores, queries_used=decision.used,
                              queries_remaining=decision.remaining)
        except (InputError, Denied) as exc:
            status = exc.status
            raise
        finally:
            service.audit.write(key_id=key_id, path="/v1/predict", status=status, n=n, input_sha256=digest,
                                ms=round(1000 * (time.perf_counter() - start), 3),
                                client=request.client.host if request.client else None)

    _register_schema(app, BatchRequest)
    app.router.add_event_handler("shutdown", service.audit.close)
    return app


def _register_schema(app: FastAPI, model: type) -> None:
    """Add a pydantic model (and its sub-models) to the OpenAPI components."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original()
            defs = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(defs.pop("$defs", {}))
            components[model.__name__] = defs
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
