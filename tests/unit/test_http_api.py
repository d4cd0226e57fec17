"""The partner HTTP API through a real HTTP client against hypercorn on a loopback port.

Calls are placed through `RecordingOriginator` (tests/partner_peers.py), which lets a
test drive every state and refusal an originator may report; the same path through the
real call core and a SIP trunk is tests/integration/test_partner_api.py. Bindings,
budgets and CDRs run on the real SQLite store.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio
import yaml
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.routing import Route

from gateway.calls.origination import CallRefused, ClickToCallState
from gateway.calls.partners import PartnerService
from gateway.config import (
    Config,
    ConfigError,
    HttpConfig,
    PartnerConfig,
    default_config,
    parse_config,
)
from gateway.control.http import ENDPOINTS, MAX_BODY, OPENAPI_PATH, build_app, run_http
from gateway.store.model import Cdr, Subscriber
from gateway.store.sqlite import SqliteStore
from tests.partner_peers import RecordingOriginator, free_tcp_port

ACME_POOL = ["+8617000000000", "+8617000000001"]
PARTNERS = [
    PartnerConfig(name="acme", api_key="key-acme", budget="10.00", masked_pool=ACME_POOL),
    PartnerConfig(name="other", api_key="key-other", budget="5.00", masked_pool=["+8617100000000"]),
    PartnerConfig(name="broke", api_key="key-broke", budget="0.00", masked_pool=["+8617200000000"]),
    PartnerConfig(
        name="sponsor",
        api_key="key-sponsor",
        budget="0.00",
        bill_user=True,
        masked_pool=["+8617300000000"],
    ),
    PartnerConfig(name="poolless", api_key="key-poolless", budget="1.00"),
]
A, B = "+8613800138000", "+8613800138001"


@dataclass
class Clock:
    offset: float = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Api:
    base: str
    client: httpx.AsyncClient
    service: PartnerService
    originator: RecordingOriginator
    store: SqliteStore
    registry: CollectorRegistry
    clock: Clock

    async def post(self, path: str, body: Any, key: str | None = "key-acme") -> httpx.Response:
        content = body if isinstance(body, bytes) else msgspec.json.encode(body)
        return await self.client.post(path, content=content, headers=auth(key))

    async def get(self, path: str, key: str | None = "key-acme") -> httpx.Response:
        return await self.client.get(path, headers=auth(key))

    async def delete(self, path: str, key: str | None = "key-acme") -> httpx.Response:
        return await self.client.delete(path, headers=auth(key))


def auth(key: str | None) -> dict[str, str]:
    return {} if key is None else {"Authorization": f"Bearer {key}"}


def make_config(port: int) -> Config:
    http = HttpConfig(listen=f"127.0.0.1:{port}", call_retention=60.0, max_binding_ttl=86400.0)
    return Config(partners=PARTNERS, http=http)


@pytest.fixture
async def api(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Api]:
    async with SqliteStore(tmp_path / "state.db") as store:
        await store.upsert_subscriber(Subscriber(username="1001", password="pw", numbers=[]))
        config = make_config(free_tcp_port())
        clock = Clock()
        originator = RecordingOriginator(nursery)
        service = PartnerService(config, store, originator, clock=clock)
        registry = CollectorRegistry()
        binds = await nursery.start(run_http, config, service, registry)
        async with httpx.AsyncClient(base_url=binds[0], trust_env=False) as client:
            yield Api(binds[0], client, service, originator, store, registry, clock)
        nursery.cancel_scope.cancel()


def assert_error(response: httpx.Response, status: int, field: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "message", "field"} and body["message"]
    assert body["field"] == field, body


# ---- click-to-call -------------------------------------------------------------------------


async def test_create_call_places_it_with_normalized_parties(api: Api) -> None:
    response = await api.post("/v1/calls", {"from": "138 0013 8000", "to": "1001"})
    assert response.status_code == 201, response.text
    call = response.json()
    assert call["state"] == "created" and call["cause"] is None
    assert (call["from"], call["to"]) == (A, "1001")
    assert response.headers["location"] == f"/v1/calls/{call['id']}"
    placed = api.originator.placed[call["id"]]
    assert (placed.partner, placed.a, placed.b) == ("acme", A, "1001")
    assert abs(call["created_at"] - time.time()) < 5


async def test_states_are_polled(api: Api) -> None:
    call_id = (await api.post("/v1/calls", {"from": A, "to": B})).json()["id"]
    seen = []
    for state in (
        ClickToCallState.CALLING_A,
        ClickToCallState.CALLING_B,
        ClickToCallState.BRIDGED,
    ):
        api.originator.drive(call_id, state)
        seen.append((await api.get(f"/v1/calls/{call_id}")).json()["state"])
    api.originator.drive(call_id, ClickToCallState.ENDED, "a-bye")
    ended = (await api.get(f"/v1/calls/{call_id}")).json()
    assert seen == ["calling_a", "calling_b", "bridged"]
    assert (ended["state"], ended["cause"]) == ("ended", "a-bye")
    assert ended["ended_at"] is not None


async def test_delete_ends_the_call(api: Api) -> None:
    call_id = (await api.post("/v1/calls", {"from": A, "to": B})).json()["id"]
    api.originator.drive(call_id, ClickToCallState.CALLING_A)
    response = await api.delete(f"/v1/calls/{call_id}")
    assert response.status_code == 200
    assert (response.json()["state"], response.json()["cause"]) == ("ended", "api-delete")
    assert api.originator.hangups == [call_id]
    again = await api.delete(f"/v1/calls/{call_id}")  # already ended: shown as it is
    assert again.status_code == 200 and again.json()["state"] == "ended"
    assert api.originator.hangups == [call_id]


async def test_unknown_and_other_partners_calls_are_404(api: Api) -> None:
    call_id = (await api.post("/v1/calls", {"from": A, "to": B})).json()["id"]
    assert_error(await api.get(f"/v1/calls/{call_id}", key="key-other"), 404)
    assert_error(await api.delete(f"/v1/calls/{call_id}", key="key-other"), 404)
    assert_error(await api.get("/v1/calls/no-such-call"), 404)
    assert_error(await api.delete("/v1/calls/no-such-call"), 404)
    assert api.originator.hangups == []  # another partner cannot end it


async def test_finished_calls_are_forgotten_after_the_retention(api: Api) -> None:
    call_id = (await api.post("/v1/calls", {"from": A, "to": B})).json()["id"]
    api.originator.drive(call_id, ClickToCallState.ENDED, "a-busy")
    api.clock.offset = 59.0
    assert (await api.get(f"/v1/calls/{call_id}")).status_code == 200
    api.clock.offset = 61.0
    assert_error(await api.get(f"/v1/calls/{call_id}"), 404)


async def test_a_live_call_is_never_forgotten(api: Api) -> None:
    call_id = (await api.post("/v1/calls", {"from": A, "to": B})).json()["id"]
    api.clock.offset = 10_000.0
    assert (await api.get(f"/v1/calls/{call_id}")).json()["state"] == "created"


@pytest.mark.parametrize(
    ("body", "field", "what"),
    [
        (b"", "body", "no body"),
        (b"{", "body", "truncated JSON"),
        (b'{"from": "+8613800138000", "to": "1001"} tail', "body", "trailing bytes"),
        (b"[1, 2]", "body", "an array, not an object"),
        (b'"text"', "body", "a string, not an object"),
        ({"from": 13800138000, "to": B}, "from", "a number where a string belongs"),
        ({"from": A, "to": None}, "to", "null where a string belongs"),
        ({"from": A}, "to", "missing field"),
        ({"from": A, "to": B, "ttl_s": 5}, "ttl_s", "unknown field"),
        ({"from": "12345", "to": B}, "from", "too short for any number"),
        ({"from": A, "to": "+86 138 0013 800x"}, "to", "a letter in the number"),
        ({"from": A, "to": "02012345"}, "to", "wrong national length"),
        ({"from": A, "to": "110"}, "to", "an emergency short code"),
        ({"from": A, "to": "  "}, "to", "blank"),
        ({"from": A, "to": "+86" + "1" * 70}, "to", "longer than any party"),
        ({"from": A, "to": "13800138000"}, "to", "the same party as from"),
        ({"from": "nobody", "to": B}, "from", "neither a subscriber nor a number"),
        ({"from": A, "to": B, "callback_url": "ftp://x/"}, "callback_url", "not http(s)"),
        ({"from": A, "to": B, "callback_url": "/relative"}, "callback_url", "relative URL"),
        ({"from": A, "to": B, "callback_url": 7}, "callback_url", "not a string"),
    ],
)
async def test_malformed_call_requests_are_400_naming_the_field(
    api: Api, body: Any, field: str, what: str
) -> None:
    assert_error(await api.post("/v1/calls", body), 400, field)
    assert api.originator.placed == {}, what
    assert api.service.stats.calls_started == 0


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer key acme"},
        {"Authorization": "Basic a2V5LWFjbWU6"},
        {"Authorization": "Bearer key-acmE"},
        {"Authorization": "Bearer key-acme-and-more"},
        {"Authorization": "Bearer key-acm"},
    ],
    ids=["none", "no-key", "spaced-key", "basic", "wrong-case", "longer", "prefix"],
)
async def test_missing_or_wrong_key_is_401_and_creates_nothing(
    api: Api, headers: dict[str, str]
) -> None:
    body = msgspec.json.encode({"from": A, "to": B})
    for path in ("/v1/calls", "/v1/bindings"):
        response = await api.client.post(path, content=body, headers=headers)
        assert_error(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")
    for path in ("/v1/calls/x", "/v1/bindings/x", "/v1/cdrs"):
        assert_error(await api.client.get(path, headers=headers), 401)
    assert api.originator.placed == {}


async def test_a_spent_budget_is_402_and_creates_nothing(api: Api) -> None:
    assert_error(await api.post("/v1/calls", {"from": A, "to": B}, key="key-broke"), 402)
    binding = {"a": A, "b": B, "ttl_s": 60}
    assert_error(await api.post("/v1/bindings", binding, key="key-broke"), 402)
    assert api.originator.placed == {}
    assert await api.store.masked_binding("+8617200000000", time.time()) is None
    # Spending the rest of acme's budget makes it 402 too.
    await api.store.adjust_balance("partner", "acme", "-10.00", "adjustment")
    assert_error(await api.post("/v1/calls", {"from": A, "to": B}), 402)
    assert api.service.stats.calls_refused == {402: 2}


async def test_a_partner_billing_its_users_goes_on_with_a_spent_budget(api: Api) -> None:
    call = await api.post("/v1/calls", {"from": A, "to": B}, key="key-sponsor")
    assert call.status_code == 201
    binding = await api.post("/v1/bindings", {"a": A, "b": B, "ttl_s": 60}, key="key-sponsor")
    assert binding.status_code == 201 and binding.json()["number"] == "+8617300000000"


@pytest.mark.parametrize(
    ("refused", "status", "reason"),
    [
        (403, 403, "blocked prefix"),
        (503, 503, "full"),
        (402, 402, "budget"),
        (404, 403, "party b: no such subscriber"),  # other refusals of the call: 403
        (480, 403, "party a: unreachable"),
        (500, 503, "server error"),  # the gateway's own failure: 503
    ],
)
async def test_a_call_refused_by_the_originator_leaves_nothing(
    api: Api, refused: int, status: int, reason: str
) -> None:
    api.originator.refuse_next = CallRefused(refused, reason)
    response = await api.post("/v1/calls", {"from": A, "to": B})
    assert_error(response, status)
    assert response.json()["message"] == reason
    assert api.service.active_calls == 0 and api.originator.placed == {}
    assert api.service.stats.calls_refused == {status: 1}


# ---- masked numbers ------------------------------------------------------------------------


async def test_binding_lifecycle(api: Api) -> None:
    response = await api.post("/v1/bindings", {"a": "13800138000", "b": "1001", "ttl_s": 600})
    assert response.status_code == 201, response.text
    binding = response.json()
    assert binding["number"] in ACME_POOL
    assert (binding["a"], binding["b"]) == (A, "1001")
    assert 599 < binding["expires_at"] - binding["created_at"] <= 600
    assert response.headers["location"] == f"/v1/bindings/{binding['id']}"
    path = f"/v1/bindings/{binding['id']}"
    assert (await api.get(path)).json() == binding
    assert_error(await api.get(path, key="key-other"), 404)
    assert_error(await api.delete(path, key="key-other"), 404)
    deleted = await api.delete(path)
    assert deleted.status_code == 204 and deleted.content == b""
    assert_error(await api.get(path), 404)
    assert_error(await api.delete(path), 404)


async def test_an_exhausted_pool_is_409(api: Api) -> None:
    numbers = set()
    for _ in ACME_POOL:
        response = await api.post("/v1/bindings", {"a": A, "b": B, "ttl_s": 60})
        numbers.add(response.json()["number"])
    assert numbers == set(ACME_POOL)
    assert_error(await api.post("/v1/bindings", {"a": A, "b": B, "ttl_s": 60}), 409)
    assert_error(
        await api.post("/v1/bindings", {"a": A, "b": B, "ttl_s": 60}, key="key-poolless"), 409
    )
    assert api.service.stats.bindings_refused == {409: 2}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"", "body"),
        (b"{'a': 1}", "body"),
        ({"a": A, "b": B, "ttl_s": 0}, "ttl_s"),
        ({"a": A, "b": B, "ttl_s": -5}, "ttl_s"),
        ({"a": A, "b": B, "ttl_s": 86401}, "ttl_s"),
        ({"a": A, "b": B, "ttl_s": "60"}, "ttl_s"),
        ({"a": A, "b": B, "ttl_s": True}, "ttl_s"),
        ({"a": A, "b": B, "ttl_s": 1e400}, "ttl_s"),  # beyond any float
        ({"a": A, "b": B}, "ttl_s"),
        ({"a": A, "b": B, "ttl_s": 60, "number": "+8617000000000"}, "number"),
        ({"a": "abc", "b": B, "ttl_s": 60}, "a"),
        ({"a": A, "b": ["x"], "ttl_s": 60}, "b"),
        ({"a": A, "b": "+86 13800138000", "ttl_s": 60}, "b"),
    ],
)
async def test_malformed_binding_requests_are_400_naming_the_field(
    api: Api, body: Any, field: str
) -> None:
    if isinstance(body, dict) and body.get("ttl_s") == 1e400:
        body = b'{"a": "%s", "b": "%s", "ttl_s": 1e400}' % (A.encode(), B.encode())
    assert_error(await api.post("/v1/bindings", body), 400, field)
    assert await api.store.masked_binding(ACME_POOL[0], time.time()) is None


# ---- CDRs ----------------------------------------------------------------------------------


def cdr(call_id: str, start: float, partner: str | None) -> Cdr:
    return Cdr(
        id=call_id,
        caller=A,
        callee=B,
        route="trunk",
        trunk="carrier",
        start=start,
        answer=start + 1,
        end=start + 61,
        duration=60.0,
        disposition="answered",
        end_reason="caller-bye",
        sip_status=200,
        caller_call_id=f"{call_id}@a",
        callee_call_id=f"{call_id}@b",
        partner=partner,
        payer=f"partner:{partner}" if partner else None,
    )


async def test_cdrs_are_the_partners_own_since_a_time(api: Api) -> None:
    t0 = 1_735_689_600.0  # 2025-01-01T00:00:00Z
    for call_id, start, partner in [
        ("old", t0 - 10, "acme"),
        ("new", t0 + 10, "acme"),
        ("newer", t0 + 20, "acme"),
        ("theirs", t0 + 30, "other"),
        ("free", t0 + 40, None),
    ]:
        await api.store.write_cdr(cdr(call_id, start, partner))

    async def ids(query: str, key: str = "key-acme") -> list[str]:
        response = await api.get(f"/v1/cdrs{query}", key=key)
        assert response.status_code == 200, response.text
        return [row["id"] for row in response.json()]

    assert await ids("") == ["newer", "new", "old"]
    assert await ids(f"?since={t0:.0f}") == ["newer", "new"]
    assert await ids("?since=2025-01-01T00:00:00Z") == ["newer", "new"]
    assert await ids("?since=2025-01-01T08:00:15%2B08:00") == ["newer"]
    assert await ids("?since=2025-01-01T00:00:00") == ["newer", "new"]  # no offset: UTC
    assert await ids("?limit=1") == ["newer"]
    assert await ids("", key="key-other") == ["theirs"]
    row = (await api.get("/v1/cdrs?limit=1")).json()[0]
    assert (row["partner"], row["payer"], row["duration"]) == ("acme", "partner:acme", 60.0)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?since=yesterday", "since"),
        ("?since=", "since"),
        ("?since=2025-13-01", "since"),
        ("?limit=0", "limit"),
        ("?limit=1001", "limit"),
        ("?limit=-1", "limit"),
        ("?limit=ten", "limit"),
    ],
)
async def test_bad_cdr_queries_are_400_naming_the_parameter(
    api: Api, query: str, field: str
) -> None:
    assert_error(await api.get(f"/v1/cdrs{query}"), 400, field)


# ---- HTTP itself ---------------------------------------------------------------------------


async def test_wrong_method_is_405_with_allow_and_unknown_path_404(api: Api) -> None:
    response = await api.client.put("/v1/calls", headers=auth("key-acme"))
    assert_error(response, 405)
    assert response.headers["allow"] == "POST"
    response = await api.client.patch("/v1/bindings/x", headers=auth("key-acme"))
    assert_error(response, 405)
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD", "DELETE"}
    assert_error(await api.get("/v1/nothing"), 404)
    assert_error(await api.post("/v1/calls/", {"from": A, "to": B}), 404)  # no redirect


async def test_a_body_over_the_limit_is_413(api: Api) -> None:
    body = b'{"from": "' + b"1" * MAX_BODY + b'", "to": "x"}'
    assert_error(await api.post("/v1/calls", body), 413, "body")
    assert api.originator.placed == {}


async def test_a_failure_inside_is_500_json_and_the_server_goes_on(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(partner: str, binding_id: str) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(api.store, "get_masked_binding", broken)
    response = await api.get("/v1/bindings/x")
    assert_error(response, 500)
    assert "disk on fire" not in response.text  # internals stay inside
    assert (await api.get("/v1/calls/x")).status_code == 404
    await counted(api.registry, ("GET", "/v1/calls/{id}"))
    assert answered_statuses(api.registry)[("GET", "/v1/bindings/{id}")] == {500}


async def test_openapi_is_served_as_kept_in_the_repo(api: Api) -> None:
    response = await api.client.get("/v1/openapi.yaml")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/yaml")
    assert response.content == OPENAPI_PATH.read_bytes()
    head = await api.client.head("/v1/openapi.yaml")
    assert head.status_code == 200 and head.content == b""


async def test_metrics_count_requests_by_route_and_status(api: Api) -> None:
    await api.post("/v1/calls", {"from": A, "to": B})
    await api.get("/v1/calls/nope")
    await api.get("/v1/nothing/at/all")
    await counted(api.registry, ("GET", "unmatched"))
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for line in (
        'edgegw_http_requests_total{method="POST",route="/v1/calls",status="201"} 1.0',
        'edgegw_http_requests_total{method="GET",route="/v1/calls/{id}",status="404"} 1.0',
        'edgegw_http_requests_total{method="GET",route="unmatched",status="404"} 1.0',
        "edgegw_click_to_call_started_total 1.0",
        "edgegw_click_to_call_active 1.0",
    ):
        assert line in text.splitlines(), line


# ---- the OpenAPI description matches the app -----------------------------------------------


def documented() -> dict[tuple[str, str], set[int]]:
    spec = yaml.safe_load(OPENAPI_PATH.read_text())
    assert spec["openapi"].startswith("3.1")
    table: dict[tuple[str, str], set[int]] = {}
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            table[(method.upper(), path)] = {int(code) for code in operation["responses"]}
    return table


def served_routes(service: PartnerService) -> set[tuple[str, str]]:
    app = build_app(service, CollectorRegistry())
    assert isinstance(app.app, Starlette)
    routes = [route for route in app.app.routes if isinstance(route, Route)]
    assert len(routes) == len(app.app.routes)  # nothing mounted beside the routes
    return {
        (method, route.path)
        for route in routes
        for method in route.methods or ()
        if method != "HEAD"
    }


async def test_openapi_documents_every_route_method_and_status(api: Api) -> None:
    spec = documented()
    assert served_routes(api.service) == set(spec)
    assert {(e.method, e.path): set(e.statuses) for e in ENDPOINTS} == spec


async def test_every_documented_status_is_answered_and_no_other(api: Api) -> None:
    """A sweep that makes every route answer every status it documents; the metrics then
    show exactly the documented (method, route, status) triples."""
    call_id = (await api.post("/v1/calls", {"from": A, "to": B})).json()["id"]
    for method in ("GET", "DELETE"):
        await api.client.request(method, f"/v1/calls/{call_id}", headers=auth("key-acme"))
        await api.client.request(method, "/v1/calls/x", headers=auth("key-acme"))
        await api.client.request(method, "/v1/calls/x")
    await api.post("/v1/calls", b"")
    await api.post("/v1/calls", {"from": A, "to": B}, key=None)
    await api.post("/v1/calls", {"from": A, "to": B}, key="key-broke")
    await api.post("/v1/calls", b"{" * (MAX_BODY + 1))
    for status in (403, 503):
        api.originator.refuse_next = CallRefused(status, "refused")
        await api.post("/v1/calls", {"from": A, "to": B})
    binding = (await api.post("/v1/bindings", {"a": A, "b": B, "ttl_s": 60})).json()
    await api.post("/v1/bindings", {"a": A, "b": B, "ttl_s": 60})
    await api.post("/v1/bindings", {"a": A, "b": B, "ttl_s": 60})  # 409
    await api.post("/v1/bindings", {"a": A})
    await api.post("/v1/bindings", {"a": A, "b": B, "ttl_s": 60}, key=None)
    await api.post("/v1/bindings", {"a": A, "b": B, "ttl_s": 60}, key="key-broke")
    await api.post("/v1/bindings", b" " * (MAX_BODY + 1))
    await api.get(f"/v1/bindings/{binding['id']}")
    await api.delete(f"/v1/bindings/{binding['id']}")
    for method in ("GET", "DELETE"):
        await api.client.request(method, "/v1/bindings/x", headers=auth("key-acme"))
        await api.client.request(method, "/v1/bindings/x")
    await api.get("/v1/cdrs")
    await api.get("/v1/cdrs?since=never")
    await api.get("/v1/cdrs", key=None)
    await api.client.get("/metrics")
    await api.client.get("/v1/openapi.yaml")
    await counted(api.registry, ("GET", "/v1/openapi.yaml"))
    assert answered_statuses(api.registry) == documented()


async def counted(registry: CollectorRegistry, route: tuple[str, str]) -> None:
    """Wait until `route` was counted: a request is counted just after its answer went out."""
    with trio.fail_after(5):
        while route not in answered_statuses(registry):
            await trio.sleep(0.01)


def answered_statuses(registry: CollectorRegistry) -> dict[tuple[str, str], set[int]]:
    answered: dict[tuple[str, str], set[int]] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == "edgegw_http_requests_total":
                key = (sample.labels["method"], sample.labels["route"])
                answered.setdefault(key, set()).add(int(sample.labels["status"]))
    return answered


# ---- the [http] keys of the configuration ---------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("call_retention = 0", "http.call_retention"),
        ("max_binding_ttl = -1.0", "http.max_binding_ttl"),
        ("callback_attempts = 0", "http.callback_attempts"),
        ("callback_backoff = -1.0", "http.callback_backoff"),
        ("callback_backoff = 2.0\ncallback_backoff_max = 1.0", "http.callback_backoff_max"),
        ("callback_timeout = nan", "http.callback_timeout"),
        ('listen = "localhost:8080"', "http.listen"),
        ("callback_attempts = 2.5", "http.callback_attempts"),
    ],
)
def test_bad_http_settings_are_refused_naming_the_key(toml: str, key: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(f"[http]\n{toml}\n", source="edgegw.toml")
    assert refused.value.key == key, str(refused.value)


def test_http_settings_default_to_the_embedded_demo() -> None:
    http = parse_config("", source="edgegw.toml").http
    assert (http.host, http.port) == ("127.0.0.1", 8080)
    assert (http.callback_attempts, http.callback_backoff, http.callback_backoff_max) == (
        6,
        1.0,
        16.0,
    )
    demo = default_config()
    assert [(p.name, p.api_key, p.budget) for p in demo.partners] == [
        ("demo", "demo-key", "1000000.00")
    ]
