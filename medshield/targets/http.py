"""The HTTP transport every remote model source shares: one-line errors, no hidden retries, and
exact accounting of what was sent.

A remote target is attacked through a :class:`~medshield.attacks.decision.oracle.LabelOracle`, which
counts every query per image; the transport counts every image it *sent* (``rows_sent``) and every
image the server *answered* (``queries``), so the two can be compared with the server's own log.
Requests are never retried unless ``retries`` is set, and then only when the connection could not be
opened (the server never saw the request), so no query is ever counted twice or sent twice.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

import httpx

from medshield.errors import BudgetExceeded, MedShieldError

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class RemoteError(MedShieldError):
    """The server refused a request (4xx), failed (5xx), could not be reached, or answered nonsense."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.detail = message


class AuthenticationError(RemoteError):
    """401: the API key or token is missing or wrong."""


class Forbidden(RemoteError):
    """403: the key was blocked (e.g. by an attack-stream detector)."""


class RateLimited(RemoteError, BudgetExceeded):
    """429: the budget is spent (``retry_after`` None) or the client must wait ``retry_after`` seconds."""

    def __init__(self, status: int, message: str, retry_after: float | None) -> None:
        super().__init__(status, message)
        self.retry_after = retry_after


def expand_env(value: str) -> str:
    """Replace ``${NAME}`` with the environment variable ``NAME`` (secrets stay out of card files)."""

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise MedShieldError(f"environment variable {name} is not set (used in a header of the target card)")
        return os.environ[name]

    return _ENV.sub(sub, value)


class HttpTransport:
    """JSON over HTTP to one base URL, with one-line errors and a request/row count.

    ``http``: an httpx-compatible client to use instead of a new ``httpx.Client`` (FastAPI's
    ``TestClient`` in tests). ``retries``: extra attempts on connection failures only (default 0).
    """

    def __init__(self, url: str, headers: Mapping[str, str] | None = None, timeout: float = 30.0,
                 retries: int = 0, http: Any = None) -> None:
        if timeout <= 0 or retries < 0:
            raise ValueError(f"need timeout > 0 and retries >= 0, got {timeout} and {retries}")
        self.url = url.rstrip("/")
        self.headers = {k: expand_env(str(v)) for k, v in (headers or {}).items()}
        self.timeout, self.retries = timeout, retries
        self._http = http if http is not None else _httpx_client(self.url, timeout)
        self.requests = 0     # requests answered with a 2xx
        self.rows_sent = 0    # images in every request that reached the wire (answered or not)
        self.queries = 0      # images in answered requests: what the server charged

    def close(self) -> None:
        self._http.close()

    def get(self, path: str) -> Any:
        """GET ``path`` and return the decoded JSON body."""
        return _json_body(self._send("GET", path), self._where("GET", path))

    def get_status(self, path: str) -> int:
        """GET ``path`` and return the status code (readiness probes); unreachable servers raise."""
        return int(self._send("GET", path, check=False).status_code)

    def post(self, path: str, body: Any, rows: int = 0) -> Any:
        """POST ``body`` as JSON; ``rows`` images are counted as sent, and as queries once answered."""
        response = self._send("POST", path, json=body, rows=rows)
        self.requests += 1
        self.queries += rows
        return _json_body(response, self._where("POST", path))

    def _where(self, method: str, path: str) -> str:
        return f"{method} {self.url}{path}"

    def _send(self, method: str, path: str, rows: int = 0, check: bool = True, **kwargs: Any) -> Any:
        where = self._where(method, path)
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, path, headers=self.headers, **kwargs)
            except httpx.ConnectError as exc:
                if attempt < self.retries:
                    continue
                raise RemoteError(0, f"cannot reach {where}: connection refused or host unknown ({exc})") from None
            except httpx.TimeoutException:
                self.rows_sent += rows
                raise RemoteError(0, f"no answer from {where} within {self.timeout:g} s (not retried: the "
                                     "server may have answered, so the query counts as sent)") from None
            except httpx.HTTPError as exc:
                self.rows_sent += rows
                raise RemoteError(0, f"{where} failed: {type(exc).__name__}: {exc}") from None
            self.rows_sent += rows
            return checked(response, where) if check else response
        raise AssertionError("unreachable")


def checked(response: Any, where: str = "") -> Any:
    """``response`` if its status is < 400, else the matching :class:`RemoteError` with the server's detail."""
    status = response.status_code
    if status < 400:
        return response
    try:
        body = response.json()
        detail = str(body.get("detail", body.get("error", body))) if isinstance(body, dict) else str(body)
    except (ValueError, AttributeError):
        detail = response.text[:200]
    detail = f"{detail} ({where})" if where else detail
    if status == 401:
        raise AuthenticationError(status, detail)
    if status == 403:
        raise Forbidden(status, detail)
    if status == 429:
        retry = response.headers.get("Retry-After")
        raise RateLimited(status, detail, _number(retry))
    raise RemoteError(status, detail)


def _json_body(response: Any, where: str) -> Any:
    try:
        return response.json()
    except (ValueError, json.JSONDecodeError):
        raise RemoteError(0, f"malformed response from {where}: not JSON ({response.text[:80]!r})") from None


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and value == value and abs(value) != float("inf") else None


def _httpx_client(url: str, timeout: float) -> Any:
    return httpx.Client(base_url=url, timeout=timeout)
