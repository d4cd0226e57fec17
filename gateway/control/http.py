"""The partner HTTP API (``/v1/...``) and ``/metrics``: HTTP/1.1 served by hypercorn on Trio.

The app is ASGI, built on Starlette: it runs on Trio through anyio, brings routing with
path parameters, ``405`` with ``Allow`` and ``HEAD`` for ``GET``, and leaves the rest to
us. Everything the API answers is JSON (the OpenAPI text and the Prometheus exposition
aside), errors included: ``{"error": CODE, "message": TEXT, "field": NAME | null}``.

* Authentication: ``Authorization: Bearer <key>`` (RFC 6750 2.1), compared with every
  partner's ``api_key`` in constant time; a missing or wrong key is ``401`` with
  ``WWW-Authenticate: Bearer`` (RFC 6750 3). ``/metrics`` and ``/v1/openapi.yaml`` need
  no key.
* Bodies are decoded by msgspec straight into typed Structs that refuse unknown fields;
  whatever is wrong (no body, bad JSON, a wrong type, a missing or unknown field, a bad
  number) is ``400`` naming the field (``"body"`` when it is the body as a whole).
* What each route answers, and with which statuses, is one table (``ENDPOINTS``); the
  OpenAPI description in ``openapi.yaml`` beside this file documents the same, and a
  test holds the two together.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast

import hypercorn.config
import hypercorn.trio
import hypercorn.typing
import msgspec
import structlog
import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.calls.partners import PartnerError, PartnerService
from gateway.config import Config, HttpConfig, PartnerConfig
from gateway.control.metrics import HttpMetrics, PartnerCollector
from gateway.store.model import MaskedBinding

__all__ = [
    "ENDPOINTS",
    "OPENAPI_PATH",
    "ApiError",
    "Endpoint",
    "Measured",
    "PartnerApi",
    "build_app",
    "hypercorn_config",
    "run_http",
]

log = structlog.get_logger("edgegw.http")

OPENAPI_PATH = Path(__file__).with_name("openapi.yaml")
MAX_BODY = 16 * 1024
JSON = "application/json"


class ApiError(Exception):
    """An error answer: status, a short code, the message and the field at fault."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = dict(headers or {})


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    error: str
    message: str
    field: str | None = None


# ---- request and response bodies ------------------------------------------------------


class NewCall(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    from_: str = msgspec.field(name="from")
    to: str
    callback_url: str | None = None


class NewBinding(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    a: str
    b: str
    ttl_s: float


class BindingView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    number: str
    a: str
    b: str
    created_at: float
    expires_at: float

    @classmethod
    def of(cls, binding: MaskedBinding) -> BindingView:
        return cls(
            id=binding.id,
            number=binding.number,
            a=binding.a,
            b=binding.b,
            created_at=binding.created_at,
            expires_at=binding.expires_at,
        )


def json_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(body), status, headers, media_type=JSON)


def error_response(error: ApiError) -> Response:
    body = ErrorBody(error=error.code, message=error.message, field=error.field)
    return json_response(error.status, body, error.headers)


T = TypeVar("T")
_AT = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_NAMED = re.compile(r"^Object (?:missing required|contains unknown) field `(?P<field>[^`]+)`$")


def decode_body(body: bytes, kind: type[T]) -> T:
    """`body` as a `kind`; ApiError 400 naming the field at fault ("body" for the whole)."""
    if not body.strip():
        raise ApiError(400, "invalid", "a JSON object is required", field="body")
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise _invalid(str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise ApiError(400, "invalid", f"malformed JSON: {exc}", field="body") from exc


def _invalid(text: str) -> ApiError:
    at = _AT.search(text)
    if at is not None:
        message = text[: at.start()]
        return ApiError(400, "invalid", _lower(message), field=at["path"] or "body")
    named = _NAMED.match(text)
    if named is not None:
        problem = "required field is missing" if "missing" in text else "unknown field"
        return ApiError(400, "invalid", problem, field=named["field"])
    return ApiError(400, "invalid", _lower(text), field="body")


def _lower(text: str) -> str:
    return text[:1].lower() + text[1:]


async def read_body(request: Request) -> bytes:
    """The request body, at most MAX_BODY bytes (else 413)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise ApiError(413, "too-large", f"the body exceeds {MAX_BODY} bytes", field="body")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_since(text: str) -> float:
    """Epoch seconds, or an ISO 8601 date-time (UTC when it names no offset)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ApiError(
            400, "invalid", "must be epoch seconds or an ISO 8601 date-time", field="since"
        ) from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


# ---- the routes -----------------------------------------------------------------------

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Endpoint:
    """One method on one route: the PartnerApi method answering it, and every status it
    may answer with."""

    method: str
    path: str
    handler: str
    statuses: frozenset[int]


class PartnerApi:
    """The handlers; each authenticates, decodes, calls the PartnerService and encodes."""

    def __init__(self, service: PartnerService, registry: CollectorRegistry) -> None:
        self.service = service
        self.registry = registry

    @property
    def _keys(self) -> list[tuple[bytes, PartnerConfig]]:
        # Read each time: a config reload replaces the partners (gateway.control.reload).
        return [(partner.api_key.encode(), partner) for partner in self.service.partners.values()]

    def authenticate(self, request: Request) -> PartnerConfig:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(
                401,
                "unauthorized",
                "an Authorization: Bearer <key> header is required",
                headers={"WWW-Authenticate": 'Bearer realm="edgegw"'},
            )
        given = key.strip().encode()
        found: PartnerConfig | None = None
        for api_key, partner in self._keys:  # no early exit: the time names no partner
            if hmac.compare_digest(given, api_key):
                found = partner
        if found is None:
            raise ApiError(
                401,
                "unauthorized",
                "the bearer key is not valid",
                headers={"WWW-Authenticate": 'Bearer realm="edgegw", error="invalid_token"'},
            )
        return found

    async def create_call(self, request: Request) -> Response:
        partner = self.authenticate(request)
        body = decode_body(await read_body(request), NewCall)
        call = await self.service.create_call(partner, body.from_, body.to, body.callback_url)
        return json_response(201, call.view(), {"Location": f"/v1/calls/{call.id}"})

    async def get_call(self, request: Request) -> Response:
        partner = self.authenticate(request)
        call = self.service.get_call(partner, request.path_params["id"])
        return json_response(200, call.view())

    async def delete_call(self, request: Request) -> Response:
        partner = self.authenticate(request)
        call = await self.service.end_call(partner, request.path_params["id"])
        return json_response(200, call.view())

    async def create_binding(self, request: Request) -> Response:
        partner = self.authenticate(request)
        body = decode_body(await read_body(request), NewBinding)
        binding = await self.service.create_binding(partner, body.a, body.b, body.ttl_s)
        location = {"Location": f"/v1/bindings/{binding.id}"}
        return json_response(201, BindingView.of(binding), location)

    async def get_binding(self, request: Request) -> Response:
        partner = self.authenticate(request)
        binding = await self.service.get_binding(partner, request.path_params["id"])
        return json_response(200, BindingView.of(binding))

    async def delete_binding(self, request: Request) -> Response:
        partner = self.authenticate(request)
        await self.service.delete_binding(partner, request.path_params["id"])
        return Response(status_code=204)

    async def cdrs(self, request: Request) -> Response:
        partner = self.authenticate(request)
        since_text = request.query_params.get("since")
        since = parse_since(since_text) if since_text is not None else None
        limit_text = request.query_params.get("limit", "100")
        if not limit_text.isdigit():
            raise ApiError(400, "invalid", "must be a whole number", field="limit")
        cdrs = await self.service.cdrs(partner, since, int(limit_text))
        return json_response(200, cdrs)

    async def openapi(self, request: Request) -> Response:
        text = await trio.Path(OPENAPI_PATH).read_bytes()
        return Response(text, 200, media_type="application/yaml")

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), 200, media_type=CONTENT_TYPE_LATEST)

    def handler(self, name: str) -> Handler:
        method: Handler = getattr(self, name)
        return method


def _s(*statuses: int) -> frozenset[int]:
    return frozenset(statuses)


_AUTH = (400, 401)  # 400 on the routes that read a body or a query
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("POST", "/v1/calls", "create_call", _s(201, 402, 403, 413, 503, *_AUTH)),
    Endpoint("GET", "/v1/calls/{id}", "get_call", _s(200, 401, 404)),
    Endpoint("DELETE", "/v1/calls/{id}", "delete_call", _s(200, 401, 404)),
    Endpoint("POST", "/v1/bindings", "create_binding", _s(201, 402, 409, 413, *_AUTH)),
    Endpoint("GET", "/v1/bindings/{id}", "get_binding", _s(200, 401, 404)),
    Endpoint("DELETE", "/v1/bindings/{id}", "delete_binding", _s(204, 401, 404)),
    Endpoint("GET", "/v1/cdrs", "cdrs", _s(200, *_AUTH)),
    Endpoint("GET", "/v1/openapi.yaml", "openapi", _s(200)),
    Endpoint("GET", "/metrics", "metrics", _s(200)),
)
"""Every route and method the app serves, with every status it answers with besides the
405 of a wrong method (and 500 when the gateway itself fails)."""


def build_app(service: PartnerService, registry: CollectorRegistry) -> Measured:
    """The ASGI app; registers the HTTP and partner metrics in `registry`."""
    api = PartnerApi(service, registry)
    by_path: dict[str, dict[str, Handler]] = {}
    for endpoint in ENDPOINTS:
        by_path.setdefault(endpoint.path, {})[endpoint.method] = api.handler(endpoint.handler)
    # One Route per path with all its methods, so a wrong method is 405 with Allow.
    routes = [
        Route(path, _dispatch(handlers), methods=sorted(handlers))
        for path, handlers in by_path.items()
    ]
    handlers = {HTTPException: _http_exception, Exception: _internal_error}
    app = Starlette(routes=routes, exception_handlers=handlers)
    app.router.redirect_slashes = False  # "/v1/calls/" is simply not a route
    registry.register(PartnerCollector(service))
    return Measured(app, HttpMetrics(registry))


def _dispatch(handlers: dict[str, Handler]) -> Handler:
    async def dispatch(request: Request) -> Response:
        handler = handlers["GET" if request.method == "HEAD" else request.method]
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc)
        except PartnerError as exc:
            return error_response(ApiError(exc.status, exc.code, exc.message, field=exc.field))

    return dispatch


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
    return error_response(ApiError(exc.status_code, code, exc.detail, headers=exc.headers))


async def _internal_error(request: Request, exc: Exception) -> Response:
    # Starlette answers with this, then re-raises for Measured to log.
    return error_response(ApiError(500, "internal", "the gateway failed to answer"))


class Measured:
    """Counts every answer by route template and status. An unexpected exception, which
    the app has answered 500 already, is logged here and goes no further: hypercorn would
    log it again."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, sending)
        except Exception:
            log.exception("HTTP request failed", method=scope["method"], path=scope["path"])
            if not status:
                await error_response(ApiError(500, "internal", "the gateway failed to answer"))(
                    scope, receive, sending
                )
        finally:
            route = scope.get("route")
            template = route.path if isinstance(route, Route) else "unmatched"
            self.metrics.observe(
                scope["method"], template, status or 500, time.perf_counter() - started
            )


# ---- serving --------------------------------------------------------------------------


def hypercorn_config(http: HttpConfig) -> hypercorn.config.Config:
    config = hypercorn.config.Config()
    config.bind = [http.listen]
    config.accesslog = None
    config.errorlog = logging.getLogger("edgegw.http.server")
    config.include_server_header = False
    # No HTTP/2 without TLS here; h11's cap on an unfinished request head.
    config.h11_max_incomplete_size = 16 * 1024
    return config


async def run_http(
    config: Config,
    backend: PartnerService,
    metrics: CollectorRegistry,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the API on ``config.http.listen`` until cancelled, with the partner service's
    callback deliveries; started() with the bound addresses ("http://127.0.0.1:8080")."""
    app = build_app(backend, metrics)
    # hypercorn types the app by its own ASGI TypedDicts; Starlette's are plain mappings.
    framework = cast(hypercorn.typing.ASGIFramework, app)
    serve = partial(hypercorn.trio.serve, framework, hypercorn_config(config.http), mode="asgi")
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.run)
        binds: list[str] = await nursery.start(serve)
        log.info("http ready", listen=binds)
        task_status.started(binds)
