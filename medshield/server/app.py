"""The FastAPI app: ``create_app(model, keys, ...)`` serves any ``nn.Module`` (defended or not).

Admission before work: a request's key, block, budget and rate are decided from its headers (and
its declared Content-Length) before a byte of the body is read, and an image's header (size, mode,
frames, declared decoded size) before a pixel is decoded. Every request, refused, failed or
disconnected, gets one audit record with its final status.

>>> app = create_app(model, KeyStore(["a-long-secret-key-123"]), ServeConfig(image_size=28))
>>> # uvicorn.run(app, host="127.0.0.1", port=8000, proxy_headers=False)
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from torch import nn

from medshield.defenses.limits import LimitDecision, QueryLimiter
from medshield.errors import MedShieldError
from medshield.models.bounded import predict_labels, probabilities
from medshield.server.audit import AuditLog
from medshield.server.auth import KeyStore
from medshield.server.decode import InputError, InputSpec, decode_image_file, decode_json_batch, first_line
from medshield.server.schemas import BatchRequest, ErrorBody, Health, ModelInfo, Prediction
from medshield.server.state import LimitPolicy, MemoryState, State

log = logging.getLogger(__name__)
KEY_HEADER = "X-API-Key"
DISCONNECTED = 499  # the client closed the connection before the answer (nginx's convention)
# uvicorn must not rewrite the client address from proxy headers: the app believes X-Forwarded-For
# only from ServeConfig.trusted_proxies (uvicorn's default trusts it from 127.0.0.1)
UVICORN_OPTIONS: dict[str, Any] = {"proxy_headers": False, "server_header": False}


def check_at_least(name: str, value: float, low: float = 1) -> None:
    if not value >= low:
        raise MedShieldError(f"{name} must be >= {low:g}, got {value:g}")


def check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise MedShieldError(f"--port must be 1-65535, got {port}")


def parse_networks(items: list[str] | str | None) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """``"10.0.0.0/8,127.0.0.1"`` -> networks (one-line error on a bad address)."""
    if isinstance(items, str):
        items = items.split(",")
    out = []
    for item in items or []:
        if item.strip():
            try:
                out.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError:
                raise MedShieldError(f"--trusted-proxies: {item.strip()!r} is not an IP address or network") from None
    return out


@dataclass
class ServeConfig:
    """What the deployment serves and allows (no secrets here). ``trusted_proxies``: addresses or
    networks whose ``X-Forwarded-For`` is believed (none by default: the peer address is logged)."""

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
    trusted_proxies: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.on_flag not in ("block", "throttle", "log"):
            raise MedShieldError(f"on_flag must be block, throttle or log, got {self.on_flag!r}")
        check_at_least("--max-batch", self.max_batch)
        if not self.max_request_bytes >= 1:
            raise MedShieldError(f"the request size limit (--max-request-mb) must be positive, got {self.max_request_bytes} bytes")
        check_at_least("the image side limit", self.max_side)
        check_at_least("the image size", self.image_size)
        check_at_least("throttle seconds", self.throttle_seconds, 0)
        if self.channels not in (1, 3):
            raise MedShieldError(f"the served model must take 1 or 3 channels, got {self.channels}")
        parse_networks(self.trusted_proxies)


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
    """The state behind the routes: model, lock, keys, limits, detector and audit log. Budgets, rate
    buckets, blocks and (for detectors that can export it) detector history live in ``state``
    (:mod:`medshield.server.state`), shared across restarts and worker processes unless in memory."""

    def __init__(self, model: nn.Module, keys: KeyStore, config: ServeConfig,
                 limiter: QueryLimiter | None, detector: Detector | None, state: State | None = None) -> None:
        self.model = model.eval()
        self.keys, self.config = keys, config
        self.limiter = limiter or QueryLimiter()
        self.policy = LimitPolicy(self.limiter.budget, self.limiter.rate, self.limiter.burst)
        self.state = state if state is not None else MemoryState(clock=self.limiter.clock)
        self.detector = detector
        self.spec = InputSpec(config.channels, config.image_size, config.max_batch, config.max_side)
        self.audit = AuditLog(config.audit_log)
        self.proxies = parse_networks(config.trusted_proxies)
        self.lock = threading.Lock()

    def infer(self, images: torch.Tensor) -> tuple[list[int], list[list[float]] | None]:
        """One forward pass under the model lock (wrappers may hold RNG state), eval + inference mode."""
        with self.lock, torch.inference_mode():
            self.model.eval()
            logits = self.model(images)
        labels = predict_labels(logits).tolist()
        scores = probabilities(logits).tolist() if self.config.allow_scores else None
        return labels, scores

    def gate(self, key_id: str, n: int = 1) -> None:
        """Before the body is read: a blocked key, a spent budget or an empty bucket is refused here."""
        reason = self.state.blocked(key_id)
        if reason is not None:
            raise Denied(403, f"this API key has been blocked: {reason}")
        decision = self.state.peek(key_id, n, self.policy)
        if not decision.allowed and decision.reason != "burst":
            raise refusal(decision)

    def admit(self, key_id: str, images: torch.Tensor) -> LimitDecision:
        """Budget and rate first (a denied request costs nothing), then the attack-stream detector."""
        reason = self.state.blocked(key_id)
        if reason is not None:
            raise Denied(403, f"this API key has been blocked: {reason}")
        decision = self.state.acquire(key_id, len(images), self.policy)
        if not decision.allowed:
            raise refusal(decision)
        if self.detector is not None:
            action, reason, retry = self.interpret(key_id, self.observe(key_id, images))
            if action == "block":
                message = f"blocked by the attack-stream detector: {reason}".rstrip(": ")
                self.state.block(key_id, message)
                raise Denied(403, message)
            if action == "throttle":
                wait = max(1, int((retry or self.config.throttle_seconds) + 0.999))
                raise Denied(429, f"throttled by the attack-stream detector: {reason}".rstrip(": "),
                             {"Retry-After": str(wait)})
        return decision

    def observe(self, key_id: str, images: torch.Tensor) -> Any:
        """The detector's verdict; a detector that exports its history (``export_state`` /
        ``import_state``) keeps it in the shared state, others keep it in this process."""
        detector = self.detector
        if isinstance(self.state, MemoryState) or not hasattr(detector, "export_state"):
            return detector.observe(key_id, images)  # type: ignore[union-attr]
        with self.state.detector(key_id) as session:
            stored = session.load()
            detector.import_state(key_id, stored.counters if stored else None,  # type: ignore[union-attr]
                                  stored.rows if stored else {})
            try:
                verdict = detector.observe(key_id, images)  # type: ignore[union-attr]
                exported = detector.export_state(key_id, since=int(stored.counters["stored"]) if stored else 0)  # type: ignore[union-attr]
                if exported is not None:
                    counters, rows = exported
                    session.save(counters, {k: v.numpy() for k, v in rows.items()})
            finally:
                detector.import_state(key_id, None, {})  # type: ignore[union-attr]
        return verdict

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

    def client_address(self, scope: Scope) -> str | None:
        """The peer's address; ``X-Forwarded-For`` is believed only from ``trusted_proxies`` (the
        right-most address not itself a trusted proxy)."""
        peer = scope.get("client")[0] if scope.get("client") else None
        if peer is None or not self.trusted(peer):
            return peer
        forwarded = ",".join(v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"x-forwarded-for")
        hops = [h.strip() for h in forwarded.split(",") if h.strip()]
        for hop in reversed(hops):
            if not self.trusted(hop):
                return hop if valid_ip(hop) else peer
        return hops[0] if hops and valid_ip(hops[0]) else peer

    def trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.proxies)

    def record(self, entry: dict[str, Any]) -> None:
        """One audit record, to the JSON-lines file and the state store."""
        entry = {"ts": round(time.time(), 6), **entry}
        self.audit.write(**entry)
        try:
            self.state.log(entry)
        except Exception as exc:  # noqa: BLE001 - the answer is already sent; never lose the file line
            log.error("audit record not stored in the state database: %s", first_line(exc))

    def info(self) -> ModelInfo:
        c = self.config
        return ModelInfo(model=c.model_name, input_shape=list(self.spec.shape), channels=c.channels,
                         image_size=c.image_size, classes=c.class_names, defenses=c.defenses or ["none"],
                         scores_exposed=c.allow_scores, max_batch=c.max_batch, max_request_bytes=c.max_request_bytes,
                         max_image_side=c.max_side, budget=self.limiter.budget, rate=self.limiter.rate,
                         detector=self.detector is not None)


def valid_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def refusal(decision: LimitDecision) -> Denied:
    headers = {"X-Queries-Remaining": str(decision.remaining)} if decision.remaining is not None else {}
    if decision.retry_after is not None:
        headers["Retry-After"] = str(max(1, int(decision.retry_after + 0.999)))
    return Denied(413 if decision.reason == "burst" else 429, decision.message(), headers)


class AuditMiddleware:
    """Writes one audit record per HTTP request with its final status: refusals, 404/405, failures
    (500) and clients that disconnected before the answer (499) included."""

    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [None]
        info: dict[str, Any] = {}
        scope.setdefault("state", {})["audit"] = info

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except ClientDisconnect:
            status[0] = DISCONNECTED
        except BaseException:
            status[0] = status[0] or 500
            raise
        finally:
            entry = {"method": scope.get("method"), "path": scope.get("path"), "status": status[0] or DISCONNECTED,
                     "key_id": info.pop("key_id", None), **info,
                     "ms": round(1000 * (time.perf_counter() - start), 3),
                     "client": self.service.client_address(scope)}
            await run_in_threadpool(self.service.record, entry)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything declared or streamed over ``limit`` bytes before
    reading it all; a client that disconnects mid-body raises ``ClientDisconnect``."""
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
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("application/json", "multipart/form-data"):
        raise InputError(415, "send application/json (a batch) or multipart/form-data (one image in field 'file')")
    body = await read_body(request, service.config.max_request_bytes)
    if ctype == "application/json":
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            raise InputError(400, "the body is not valid JSON") from None
        suspect = b"true" in body or b"false" in body
        return await run_in_threadpool(decode_json_batch, payload, service.spec, suspect)
    try:
        form = await request.form(max_files=1, max_fields=4, max_part_size=service.config.max_request_bytes)
    except Exception as exc:  # starlette raises several parser errors for malformed multipart
        raise InputError(400, f"malformed multipart body: {first_line(exc)}") from None
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise InputError(422, 'multipart requests need the image in the file field "file"')
    data = await upload.read()
    return await run_in_threadpool(decode_image_file, data, service.spec)


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
               limiter: QueryLimiter | None = None, detector: Detector | None = None,
               state: State | None = None) -> FastAPI:
    """A FastAPI app serving ``model`` (an ``nn.Module`` taking [N,C,H,W] pixels in [0, 1] and returning
    logits; defense wrappers included) behind API keys, query limits, an optional stateful detector
    and an audit log (JSON lines and ``state``). ``state``: where budgets, blocks, detector history
    and audit records live (default: this process's memory; see :func:`medshield.server.state.open_state`)."""
    service = Service(model, keys, config or ServeConfig(), limiter, detector, state)
    app = FastAPI(title="MedShield diagnostic service", version="1", description=__doc__,
                  openapi_tags=[{"name": "diagnosis"}])
    app.state.service = service
    app.add_middleware(AuditMiddleware, service=service)

    def note(request: Request, exc: InputError | Denied) -> None:
        request.state.audit["detail"] = exc.message

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> JSONResponse:
        note(request, exc)
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.exception_handler(Denied)
    async def denied(request: Request, exc: Denied) -> JSONResponse:
        note(request, exc)
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(ClientDisconnect)
    async def disconnected(request: Request, exc: ClientDisconnect) -> Response:
        request.state.audit["detail"] = "client disconnected before the request body was complete"
        return Response(status_code=DISCONNECTED)

    def authenticate(request: Request) -> str:
        key_id = service.keys.identify(request.headers.get(KEY_HEADER))
        if key_id is None:
            raise Denied(401, f"missing or invalid API key (send it in the {KEY_HEADER} header)",
                         {"WWW-Authenticate": KEY_HEADER})
        request.state.audit["key_id"] = key_id
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
        batch of N images costs N queries. Block, budget and rate are checked before the body is read."""
        info = request.state.audit
        await run_in_threadpool(service.gate, key_id)
        images = await decode_request(request, service)
        info["n"], info["input_sha256"] = len(images), hashlib.sha256(images.numpy().tobytes()).hexdigest()[:16]
        decision, (labels, scores) = await run_in_threadpool(service.answer, key_id, images)
        names = [service.config.class_names[i] if i < len(service.config.class_names) else str(i) for i in labels]
        return Prediction(labels=labels, classes=names, scores=scores, queries_used=decision.used,
                          queries_remaining=decision.remaining)

    _register_schema(app, BatchRequest)
    app.router.add_event_handler("shutdown", service.audit.close)
    app.router.add_event_handler("shutdown", service.state.close)
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
