"""Tests of the fake X API itself (adapters/sandbox), over real HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import re
import secrets
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from adapters.sandbox.fake_x import RATE_LIMIT_SHAPES, FakeX, FaultModel, one_to_one_id, run_fake_x
from adapters.sandbox.openapi import SpecValidator

ALICE, BOB, CAROL, DAVE = "1001", "2002", "3003", "99"
REDIRECT = "http://127.0.0.1:8765/callback"
SCOPES = "dm.read dm.write tweet.read users.read offline.access media.write"
DM_WITH = "/2/dm_conversations/with/{}/messages"


class Clock:
    """A settable clock for the fake."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    fake: FakeX
    http: aiohttp.ClientSession
    clock: Clock
    base_url: str

    def auth(self, user_id: str = ALICE, scopes: set[str] | None = None) -> dict[str, str]:
        grant = self.fake.issue_token(user_id) if scopes is None else self.fake.issue_token(user_id, scopes)
        return {"Authorization": f"Bearer {grant.access_token}"}


def _populate(fake: FakeX) -> None:
    fake.add_user(ALICE, "alice", "Alice")
    fake.add_user(BOB, "bob", "Bob")
    fake.add_user(CAROL, "carol", "Carol", accepts_dms=False)
    fake.add_user(DAVE, "dave", "Dave")


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    clock = Clock()
    async with run_fake_x(clock=clock) as (fake, base_url):
        _populate(fake)
        async with aiohttp.ClientSession(base_url=base_url) as http:
            yield Env(fake, http, clock, base_url)


@pytest.fixture
async def public_env() -> AsyncIterator[Env]:
    clock = Clock()
    async with run_fake_x(clock=clock, client_secret=None) as (fake, base_url):
        _populate(fake)
        async with aiohttp.ClientSession(base_url=base_url) as http:
            yield Env(fake, http, clock, base_url)


def _challenge(verifier: str) -> str:
    # Independent of authlib on purpose: RFC 7636 §4.2.
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def _basic(client_id: str = "test-client", secret: str = "test-secret") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


async def _authorize(
    env: Env, verifier: str, scope: str = SCOPES, state: str = "st-1"
) -> dict[str, list[str]]:
    params = {
        "response_type": "code",
        "client_id": "test-client",
        "redirect_uri": REDIRECT,
        "scope": scope,
        "state": state,
        "code_challenge": _challenge(verifier),
        "code_challenge_method": "S256",
    }
    async with env.http.get("/i/oauth2/authorize", params=params, allow_redirects=False) as resp:
        assert resp.status == 302
        location = resp.headers["Location"]
    assert location.startswith(REDIRECT + "?")
    return parse_qs(urlsplit(location).query)


async def _exchange(
    env: Env, code: str, verifier: str, *, headers: dict[str, str] | None = None, **extra: str
) -> tuple[int, dict[str, Any]]:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
    }
    form.update(extra)
    async with env.http.post(
        "/2/oauth2/token", data=form, headers=_basic() if headers is None else headers
    ) as r:
        return r.status, await r.json()


async def _refresh(env: Env, token: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    form = {"grant_type": "refresh_token", "refresh_token": token}
    async with env.http.post(
        "/2/oauth2/token", data=form, headers=_basic() if headers is None else headers
    ) as r:
        return r.status, await r.json()


async def _send(
    env: Env, to: str, text: str = "hello", headers: dict[str, str] | None = None
) -> aiohttp.ClientResponse:
    resp = await env.http.post(DM_WITH.format(to), json={"text": text}, headers=headers or env.auth())
    await resp.read()
    return resp


def _png(width: int = 3, height: int = 2) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


# ------------------------------------------------------------------------------ OAuth


async def test_pkce_round_trip(env: Env) -> None:
    verifier = secrets.token_urlsafe(48)
    query = await _authorize(env, verifier)
    assert query["state"] == ["st-1"]
    status, body = await _exchange(env, query["code"][0], verifier)
    assert status == 200
    assert body["token_type"] == "bearer" and body["expires_in"] == 7200
    assert set(body["scope"].split()) == set(SCOPES.split())
    assert body["refresh_token"]
    async with env.http.get("/2/users/me", headers={"Authorization": f"Bearer {body['access_token']}"}) as r:
        assert r.status == 200
        assert (await r.json())["data"] == {"id": ALICE, "name": "Alice", "username": "alice"}
    assert env.fake.token_requests[-1]["grant_type"] == "authorization_code"
    assert env.fake.token_requests[-1]["client_auth"] == "basic"
    assert env.fake.violations == []


async def test_withheld_scopes_are_left_out_of_the_grant(env: Env) -> None:
    env.fake.withheld_scopes = {"dm.write", "offline.access"}
    verifier = secrets.token_urlsafe(48)
    query = await _authorize(env, verifier)
    status, body = await _exchange(env, query["code"][0], verifier)
    assert status == 200 and "refresh_token" not in body
    assert set(body["scope"].split()) == set(SCOPES.split()) - {"dm.write", "offline.access"}
    # The token is held to what it was granted: no DM with it.
    assert (await _send(env, BOB, headers={"Authorization": f"Bearer {body['access_token']}"})).status == 403


async def test_authorizing_user_is_settable(env: Env) -> None:
    env.fake.authorizing_user_id = BOB
    verifier = secrets.token_urlsafe(48)
    query = await _authorize(env, verifier)
    _, body = await _exchange(env, query["code"][0], verifier)
    async with env.http.get("/2/users/me", headers={"Authorization": f"Bearer {body['access_token']}"}) as r:
        assert (await r.json())["data"]["id"] == BOB


async def test_bad_verifier_rejected_and_code_single_use(env: Env) -> None:
    verifier = secrets.token_urlsafe(48)
    code = (await _authorize(env, verifier))["code"][0]
    status, body = await _exchange(env, code, verifier + "x")
    assert status == 400 and body["error"] == "invalid_request"
    status, body = await _exchange(env, code, verifier)  # already consumed
    assert status == 400 and body["error"] == "invalid_request"


async def test_code_expires_after_30_seconds(env: Env) -> None:
    verifier = secrets.token_urlsafe(48)
    code = (await _authorize(env, verifier))["code"][0]
    env.clock.now += 31
    status, _ = await _exchange(env, code, verifier)
    assert status == 400


async def test_redirect_uri_must_match(env: Env) -> None:
    verifier = secrets.token_urlsafe(48)
    code = (await _authorize(env, verifier))["code"][0]
    status, _ = await _exchange(env, code, verifier, redirect_uri="http://127.0.0.1:1/other")
    assert status == 400


async def test_deny_next_authorize(env: Env) -> None:
    env.fake.deny_next_authorize = True
    query = await _authorize(env, secrets.token_urlsafe(48), state="s2")
    assert query["error"] == ["access_denied"] and query["state"] == ["s2"] and "code" not in query
    assert env.fake.deny_next_authorize is False
    assert "code" in await _authorize(env, secrets.token_urlsafe(48))


async def test_consent_page_asks_first_and_its_links_carry_the_decision(env: Env) -> None:
    env.fake.consent_page = True
    params = {
        "response_type": "code",
        "client_id": "test-client",
        "redirect_uri": REDIRECT,
        "scope": SCOPES,
        "state": "st-9",
        "code_challenge": _challenge(secrets.token_urlsafe(48)),
        "code_challenge_method": "S256",
    }
    async with env.http.get("/i/oauth2/authorize", params=params, allow_redirects=False) as resp:
        page = await resp.text()
    assert resp.status == 200 and resp.content_type == "text/html"
    assert "Authorize app" in page and env.fake.auth_codes == {}
    links = dict(re.findall(r"id=(approve|cancel) href='([^']*)'", page))
    query: dict[str, list[str]] = {}
    for choice, expected in (("cancel", "error"), ("approve", "code")):
        url = html.unescape(links[choice])
        async with env.http.get(url, allow_redirects=False) as resp:
            query = parse_qs(urlsplit(resp.headers["Location"]).query)
        assert resp.status == 302 and expected in query and query["state"] == ["st-9"], (choice, query)
    assert query["code"][0] in env.fake.auth_codes


async def test_authorize_rejects_plain_method_and_unknown_scope(env: Env) -> None:
    params = {
        "response_type": "code",
        "client_id": "test-client",
        "redirect_uri": REDIRECT,
        "scope": "dm.read user.read",  # user.read is not a scope (users.read is)
        "state": "s",
        "code_challenge": "abc",
        "code_challenge_method": "S256",
    }
    async with env.http.get("/i/oauth2/authorize", params=params, allow_redirects=False) as resp:
        assert parse_qs(urlsplit(resp.headers["Location"]).query)["error"] == ["invalid_scope"]
    params.update(scope="dm.read", code_challenge_method="plain")
    async with env.http.get("/i/oauth2/authorize", params=params, allow_redirects=False) as resp:
        assert parse_qs(urlsplit(resp.headers["Location"]).query)["error"] == ["invalid_request"]
    params.update(client_id="someone-else")
    async with env.http.get("/i/oauth2/authorize", params=params, allow_redirects=False) as resp:
        assert resp.status == 400


async def test_refresh_rotation(env: Env) -> None:
    verifier = secrets.token_urlsafe(48)
    _, first = await _exchange(env, (await _authorize(env, verifier))["code"][0], verifier)
    status, second = await _refresh(env, first["refresh_token"])
    assert status == 200
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    status, body = await _refresh(env, first["refresh_token"])
    assert status == 400
    assert body == {
        "error": "invalid_request",
        "error_description": "Value passed for the token was invalid.",
    }
    status, third = await _refresh(env, second["refresh_token"])
    assert status == 200 and third["refresh_token"] not in (first["refresh_token"], second["refresh_token"])
    assert [r["grant_type"] for r in env.fake.token_requests].count("refresh_token") == 3


async def test_no_refresh_token_without_offline_access(env: Env) -> None:
    verifier = secrets.token_urlsafe(48)
    code = (await _authorize(env, verifier, scope="dm.read dm.write tweet.read users.read"))["code"][0]
    status, body = await _exchange(env, code, verifier)
    assert status == 200 and "refresh_token" not in body


async def test_confidential_client_needs_basic_auth(env: Env) -> None:
    verifier = secrets.token_urlsafe(48)
    code = (await _authorize(env, verifier))["code"][0]
    status, body = await _exchange(env, code, verifier, headers={}, client_id="test-client")
    assert status == 401
    assert body == {"error": "unauthorized_client", "error_description": "Missing valid authorization header"}
    status, _ = await _exchange(env, code, verifier, headers=_basic(secret="wrong"))
    assert status == 401
    status, _ = await _exchange(env, code, verifier)  # code was not burnt by the failed client auth
    assert status == 200
    grant = env.fake.issue_token(ALICE)
    assert grant.refresh_token is not None
    status, body = await _refresh(env, grant.refresh_token, headers={})
    assert status == 401 and body["error"] == "unauthorized_client"


async def test_public_client_sends_client_id_in_body(public_env: Env) -> None:
    env = public_env
    verifier = secrets.token_urlsafe(48)
    code = (await _authorize(env, verifier))["code"][0]
    status, body = await _exchange(env, code, verifier, headers={})
    assert status == 400 and body["error"] == "invalid_request"
    code = (await _authorize(env, verifier))["code"][0]
    status, body = await _exchange(env, code, verifier, headers={}, client_id="test-client")
    assert status == 200 and body["refresh_token"]
    form = {"grant_type": "refresh_token", "refresh_token": body["refresh_token"], "client_id": "test-client"}
    async with env.http.post("/2/oauth2/token", data=form) as r:
        assert r.status == 200
    assert env.fake.token_requests[-1]["client_auth"] == "body"


async def test_api_auth_failures(env: Env) -> None:
    unauthorized = {"title": "Unauthorized", "type": "about:blank", "status": 401, "detail": "Unauthorized"}
    async with env.http.get("/2/users/me") as r:
        assert r.status == 401 and r.content_type == "application/problem+json"
        assert await r.json() == unauthorized
    headers = env.auth()
    env.clock.now += 7200
    async with env.http.get("/2/users/me", headers=headers) as r:
        assert r.status == 401
    grant = env.fake.issue_token(ALICE)
    env.fake.revoke_user_tokens(ALICE)
    async with env.http.get("/2/users/me", headers={"Authorization": f"Bearer {grant.access_token}"}) as r:
        assert r.status == 401
    assert grant.refresh_token is not None
    status, _ = await _refresh(env, grant.refresh_token)
    assert status == 400
    no_write = env.auth(scopes={"dm.read", "tweet.read", "users.read"})
    resp = await _send(env, BOB, headers=no_write)
    assert resp.status == 403
    assert await resp.json() == {
        "title": "Forbidden",
        "type": "about:blank",
        "status": 403,
        "detail": "Forbidden",
    }
    assert env.fake.events == []
    assert env.fake.violations == []


async def test_revoke_endpoint(env: Env) -> None:
    grant = env.fake.issue_token(ALICE)
    async with env.http.post("/2/oauth2/revoke", data={"token": grant.access_token}, headers=_basic()) as r:
        assert r.status == 200 and (await r.json())["revoked"] is True
    async with env.http.get("/2/users/me", headers={"Authorization": f"Bearer {grant.access_token}"}) as r:
        assert r.status == 401


# ------------------------------------------------------------------------------ users


async def test_user_lookup(env: Env) -> None:
    params = {"user.fields": "receives_your_dm,created_at"}
    async with env.http.get("/2/users/by/username/Carol", params=params, headers=env.auth()) as r:
        data = (await r.json())["data"]
    assert data["id"] == CAROL and data["receives_your_dm"] is False and data["created_at"].endswith("Z")
    async with env.http.get("/2/users/by/username/nobody_here", headers=env.auth()) as r:
        assert r.status == 200
        body = await r.json()
    assert "data" not in body
    (problem,) = body["errors"]
    assert problem["type"] == "https://api.x.com/2/problems/resource-not-found"
    assert problem["resource_type"] == "user" and problem["value"] == "nobody_here"
    assert env.fake.violations == []


# -------------------------------------------------------------------------------- DMs


async def test_send_one_to_one(env: Env) -> None:
    first = await _send(env, BOB, "one")
    assert first.status == 201
    data = (await first.json())["data"]
    assert data["dm_conversation_id"] == f"{ALICE}-{BOB}"
    assert len(data["dm_event_id"]) == 19 and data["dm_event_id"].isdigit()
    second = await _send(env, DAVE, "two")  # "99" < "1001" numerically
    data2 = (await second.json())["data"]
    assert data2["dm_conversation_id"] == f"{DAVE}-{ALICE}" == one_to_one_id(ALICE, DAVE)
    assert int(data2["dm_event_id"]) > int(data["dm_event_id"])
    event = env.fake.events[0]
    assert (event.sender_id, event.text, event.conversation_id, event.event_type) == (
        ALICE,
        "one",
        f"{ALICE}-{BOB}",
        "MessageCreate",
    )
    assert event.created_at == env.clock.now
    assert env.fake.conversations[f"{ALICE}-{BOB}"].participants == {ALICE, BOB}
    assert [e.text for e in env.fake.messages_in(f"{ALICE}-{BOB}")] == ["one"]
    assert env.fake.dm_posts == 2
    assert "authorization" not in env.fake.all_requests[-1].headers
    assert env.fake.all_requests[-1].json == {"text": "two"}
    assert env.fake.violations == []


async def test_send_to_existing_conversation(env: Env) -> None:
    conv_id = f"{ALICE}-{BOB}"
    async with env.http.post(
        f"/2/dm_conversations/{conv_id}/messages", json={"text": "x"}, headers=env.auth()
    ) as r:
        assert r.status == 201  # 1:1 IDs naming the sender exist implicitly
    async with env.http.post(
        f"/2/dm_conversations/{conv_id}/messages", json={"text": "x"}, headers=env.auth(DAVE)
    ) as r:
        assert r.status == 403
        assert (await r.json())["type"].endswith("/problems/not-authorized-for-resource")
    missing = "1234567890123456"
    async with env.http.post(
        f"/2/dm_conversations/{missing}/messages", json={"text": "x"}, headers=env.auth()
    ) as r:
        assert r.status == 404
        assert (await r.json())["type"].endswith("/problems/resource-not-found")
    assert len(env.fake.messages_in(conv_id)) == 1
    assert env.fake.violations == []


async def test_group_creates_a_new_conversation_each_time(env: Env) -> None:
    body = {"conversation_type": "Group", "participant_ids": [BOB, DAVE], "message": {"text": "hi all"}}
    ids = []
    for _ in range(2):
        async with env.http.post("/2/dm_conversations", json=body, headers=env.auth()) as r:
            assert r.status == 201
            ids.append((await r.json())["data"]["dm_conversation_id"])
    assert ids[0] != ids[1]
    assert all(i.isdigit() and 15 <= len(i) <= 19 for i in ids)
    assert env.fake.conversations[ids[0]].kind == "Group"
    assert env.fake.conversations[ids[0]].participants == {ALICE, BOB, DAVE}
    async with env.http.post(
        f"/2/dm_conversations/{ids[0]}/messages", json={"text": "2"}, headers=env.auth(BOB)
    ) as r:
        assert r.status == 201
    assert [e.text for e in env.fake.messages_in(ids[0])] == ["hi all", "2"]
    body["participant_ids"] = [BOB, "5555"]
    async with env.http.post("/2/dm_conversations", json=body, headers=env.auth()) as r:
        assert r.status == 400
    assert env.fake.violations == []


@pytest.mark.parametrize("shape", ["problem", "code349"])
async def test_recipient_refusing_dms(env: Env, shape: str) -> None:
    env.fake.dm_refusal_body = shape  # type: ignore[assignment]
    resp = await _send(env, CAROL)
    assert resp.status == 403
    body = await resp.json()
    if shape == "problem":
        assert body["type"] == "about:blank" and body["detail"] == "You cannot send messages to this user."
    else:
        assert body == {"errors": [{"code": 349, "message": "You cannot send messages to this user."}]}
    assert env.fake.events == []
    assert env.fake.violations == []


async def test_text_too_long_rejected(env: Env) -> None:
    resp = await _send(env, BOB, "x" * 10_001)
    assert resp.status == 400
    assert env.fake.events == []
    assert (await _send(env, BOB, "x" * 10_000)).status == 201


async def test_dm_events_listing(env: Env) -> None:
    for i in range(3):
        env.clock.now += 1
        assert (await _send(env, BOB, f"m{i}")).status == 201
    env.clock.now += 1
    assert (await _send(env, ALICE, "reply", headers=env.auth(BOB))).status == 201
    conv = f"{ALICE}-{BOB}"
    params = {
        "max_results": "3",
        "dm_event.fields": "created_at,dm_conversation_id,text",
        "expansions": "sender_id",
        "user.fields": "username",
        "event_types": "MessageCreate",
    }
    async with env.http.get(f"/2/dm_conversations/{conv}/dm_events", params=params, headers=env.auth()) as r:
        assert r.status == 200
        page1 = await r.json()
    assert [e["text"] for e in page1["data"]] == ["reply", "m2", "m1"]
    assert [e["sender_id"] for e in page1["data"]] == [BOB, ALICE, ALICE]
    assert {u["id"] for u in page1["includes"]["users"]} == {ALICE, BOB}
    assert page1["data"][0]["dm_conversation_id"] == conv and page1["data"][0]["created_at"].endswith("Z")
    assert page1["meta"]["result_count"] == 3
    params["pagination_token"] = page1["meta"]["next_token"]
    async with env.http.get(
        f"/2/dm_conversations/with/{BOB}/dm_events", params=params, headers=env.auth()
    ) as r:
        page2 = await r.json()
    assert [e["text"] for e in page2["data"]] == ["m0"]
    assert "next_token" not in page2["meta"]
    async with env.http.get(f"/2/dm_conversations/with/{DAVE}/dm_events", headers=env.auth()) as r:
        assert await r.json() == {"meta": {"result_count": 0}}
    async with env.http.get(f"/2/dm_conversations/{conv}/dm_events", headers=env.auth()) as r:
        default = (await r.json())["data"][0]
    assert set(default) == {"id", "event_type", "text"}  # sender_id only via expansions=sender_id
    async with env.http.get("/2/dm_events", params={"max_results": "2"}, headers=env.auth(BOB)) as r:
        assert [e["text"] for e in (await r.json())["data"]] == ["reply", "m2"]
    assert env.fake.violations == []


async def test_links_are_stored_as_t_co_with_expanded_entities(env: Env) -> None:
    text = "see https://Example.com/a?b=1, www.example.org and docs.example.net/x."
    assert (await _send(env, BOB, text)).status == 201
    event = env.fake.events[-1]
    assert event.text == text  # what was posted, for tests to read
    assert event.stored_text is not None and "example" not in event.stored_text.lower()
    params = {"dm_event.fields": "text,entities", "event_types": "MessageCreate"}
    conv = f"{ALICE}-{BOB}"
    async with env.http.get(f"/2/dm_conversations/{conv}/dm_events", params=params, headers=env.auth()) as r:
        [data] = (await r.json())["data"]
    assert data["text"] == event.stored_text
    urls = data["entities"]["urls"]
    assert [u["expanded_url"] for u in urls] == [
        "https://Example.com/a?b=1",
        "http://www.example.org",
        "http://docs.example.net/x",
    ]
    assert all(
        data["text"][u["start"] : u["end"]] == u["url"] and u["url"].startswith("https://t.co/") for u in urls
    )
    assert env.fake.violations == []


async def test_answers_carry_xs_clock_and_reads_have_their_own_window(env: Env) -> None:
    env.fake.enforce_read_limit = True
    env.fake.read_limit_15m = 2
    path = f"/2/dm_conversations/with/{BOB}/dm_events"
    statuses = []
    remaining = ""
    for _ in range(3):
        async with env.http.get(path, headers=env.auth()) as r:
            statuses.append(r.status)
            assert r.headers["Date"] == "Fri, 15 Jan 2027 08:00:00 GMT"  # the fake's clock, not the real one
            remaining = r.headers["x-rate-limit-remaining"]
    assert statuses == [200, 200, 429] and remaining == "0"
    assert (await _send(env, BOB, "sends are not reads")).status == 201
    env.clock.now += 900
    async with env.http.get(path, headers=env.auth()) as r:
        assert r.status == 200 and r.headers["x-rate-limit-remaining"] == "1"


async def test_each_dm_event_read_has_its_own_window_and_the_lookup_names_the_conversation(env: Env) -> None:
    """X counts GET /2/dm_events, /2/dm_events/{id} and the 1-to-1 by participant apart: one spent,
    the others still answer, each with its own headers. The lookup by id shows a DM a list leaves
    out (``unlisted_until``), with its conversation and its attachment's TON URL, but not one
    younger than X's read lag."""
    env.fake.enforce_read_limit = True
    env.fake.read_limit_15m = 1
    media_id = env.fake.add_media(BOB, b"\xff\xd8\xff" + bytes(100))
    older = env.fake.add_event(one_to_one_id(ALICE, BOB), BOB, "older", media_ids=(media_id,))
    env.fake.unlisted_until[older.id] = env.clock.now + 60
    newer = env.fake.add_event(one_to_one_id(ALICE, BOB), BOB, "newer")
    fields = {
        "dm_event.fields": "id,text,dm_conversation_id,attachments",
        "expansions": "sender_id,attachments.media_keys",
        "media.fields": "media_key,type,url",
    }
    async with env.http.get("/2/dm_events", params=fields, headers=env.auth()) as r:
        assert [e["id"] for e in (await r.json())["data"]] == [newer.id]  # the older one not yet
        assert r.headers["x-rate-limit-remaining"] == "0"
    async with env.http.get("/2/dm_events", params=fields, headers=env.auth()) as r:
        assert r.status == 429
    async with env.http.get(f"/2/dm_events/{older.id}", params=fields, headers=env.auth()) as r:
        body = await r.json()
        assert r.status == 200 and r.headers["x-rate-limit-remaining"] == "0"
    assert body["data"]["dm_conversation_id"] == one_to_one_id(ALICE, BOB)
    assert body["includes"]["media"][0]["url"] == env.fake.ton_url(older.id, media_id)
    path = f"/2/dm_conversations/with/{BOB}/dm_events"
    async with env.http.get(path, params=fields, headers=env.auth()) as r:
        assert [e["id"] for e in (await r.json())["data"]] == [newer.id]
        assert r.status == 200 and r.headers["x-rate-limit-remaining"] == "0"
    env.clock.now += 900
    env.fake.read_lag_seconds = 3600.0
    async with env.http.get(f"/2/dm_events/{newer.id}", headers=env.auth()) as r:
        assert "data" not in await r.json()  # X's read behind its write
    assert env.fake.violations == []


async def test_get_and_delete_event(env: Env) -> None:
    resp = await _send(env, BOB, "oops")
    event_id = (await resp.json())["data"]["dm_event_id"]
    async with env.http.get(f"/2/dm_events/{event_id}", headers=env.auth(BOB)) as r:
        assert (await r.json())["data"]["text"] == "oops"
    async with env.http.delete(f"/2/dm_events/{event_id}", headers=env.auth(BOB)) as r:
        assert r.status == 403
    async with env.http.delete(f"/2/dm_events/{event_id}", headers=env.auth()) as r:
        assert r.status == 200 and await r.json() == {"data": {"deleted": True}}
    assert env.fake.events[0].deleted and env.fake.messages_in(f"{ALICE}-{BOB}") == []
    async with env.http.get(f"/2/dm_events/{event_id}", headers=env.auth()) as r:
        body = await r.json()
    assert "data" not in body and body["errors"][0]["resource_type"] == "dm_event"
    assert env.fake.violations == []


# ------------------------------------------------------------------------ rate limits


@pytest.mark.parametrize("shape", ["problem", "code88"])
async def test_rate_limit_429(env: Env, shape: str) -> None:
    fake = env.fake
    fake.user_limit_15m = 2
    fake.rate_limit_body = shape  # type: ignore[assignment]
    headers = env.auth()
    ok = await _send(env, BOB, headers=headers)
    assert ok.headers["x-rate-limit-limit"] == "2" and ok.headers["x-rate-limit-remaining"] == "1"
    reset = int(ok.headers["x-rate-limit-reset"])
    assert reset == int(env.clock.now + 900)
    # X's documented limits today, the fake's defaults (NOTES §4.1).
    assert ok.headers["x-user-limit-24hour-limit"] == "1440"
    assert ok.headers["x-user-limit-24hour-remaining"] == "1439"
    assert ok.headers["x-app-limit-24hour-remaining"] == "1439"
    # The three DM POST endpoints share the window.
    async with env.http.post(
        f"/2/dm_conversations/{one_to_one_id(ALICE, DAVE)}/messages", json={"text": "x"}, headers=headers
    ) as r:
        assert r.status == 201 and r.headers["x-rate-limit-remaining"] == "0"
    limited = await _send(env, BOB, headers=headers)
    assert limited.status == 429
    assert (
        limited.headers["x-rate-limit-remaining"] == "0"
        and int(limited.headers["x-rate-limit-reset"]) == reset
    )
    body = await limited.json()
    if shape == "problem":
        assert limited.content_type == "application/problem+json"
        assert body == {
            "title": "Too Many Requests",
            "type": "about:blank",
            "status": 429,
            "detail": "Too Many Requests",
        }
    else:
        assert body == {"errors": [{"code": 88, "message": "Rate limit exceeded"}]}
    assert len(fake.events) == 2 and fake.rate_limited_count == 1
    # Another user has their own window.
    assert (await _send(env, ALICE, headers=env.auth(BOB))).status == 201
    env.clock.now += 900
    again = await _send(env, BOB, headers=headers)
    assert again.status == 201 and again.headers["x-rate-limit-remaining"] == "1"
    assert fake.violations == []


async def test_daily_app_limit_429_with_15_minute_remaining(env: Env) -> None:
    env.fake.app_limit_24h = 1
    assert (await _send(env, BOB)).status == 201
    limited = await _send(env, BOB, headers=env.auth(DAVE))
    assert limited.status == 429
    assert int(limited.headers["x-rate-limit-remaining"]) > 0  # the NOTES §4.5 trap
    assert limited.headers["x-app-limit-24hour-remaining"] == "0"


async def test_limits_can_shrink_mid_window_and_windows_are_configurable(env: Env) -> None:
    env.fake.window_15m_seconds = 2.0
    env.fake.send_24h_headers = False
    headers = env.auth()
    for _ in range(3):
        assert (await _send(env, BOB, headers=headers)).status == 201
    env.fake.user_limit_15m = 3
    limited = await _send(env, BOB, headers=headers)
    assert limited.status == 429 and "x-user-limit-24hour-limit" not in limited.headers
    env.clock.now += 2
    assert (await _send(env, BOB, headers=headers)).status == 201
    env.fake.override_headers = {"x-rate-limit-remaining": "7"}
    assert (await _send(env, BOB, headers=headers)).headers["x-rate-limit-remaining"] == "7"


# ----------------------------------------------------------------------------- faults


@pytest.mark.parametrize(("kind", "status"), [("503", 503), ("401", 401), ("403", 403), ("429", 429)])
async def test_status_faults_do_not_record(env: Env, kind: str, status: int) -> None:
    env.fake.inject(kind, count=2)  # type: ignore[arg-type]
    answers = [await _send(env, BOB) for _ in range(2)]
    for resp in answers:
        assert resp.status == status
        assert "x-rate-limit-limit" in resp.headers
    resp = answers[-1]
    assert env.fake.events == []
    if kind == "429":
        assert resp.headers["x-rate-limit-remaining"] == "0"
        assert int(resp.headers["x-rate-limit-reset"]) == int(env.clock.now + env.fake.injected_reset_seconds)
        assert env.fake.rate_limited_count == 2
    assert (await _send(env, BOB)).status == 201  # the fault is used up
    assert env.fake.faults == [] and len(env.fake.faults_served) == 2
    assert env.fake.violations == []


async def test_lost_response_records_the_message(env: Env) -> None:
    env.fake.inject("lost_response")
    with pytest.raises(aiohttp.ClientConnectionError):
        await _send(env, BOB, "maybe")
    assert [e.text for e in env.fake.events] == ["maybe"]
    assert (await _send(env, BOB)).status == 201


async def test_timeout_fault_hangs_without_recording(env: Env) -> None:
    env.fake.inject("timeout")
    env.fake.timeout_seconds = 5.0
    with pytest.raises(TimeoutError):
        await env.http.post(
            DM_WITH.format(BOB),
            json={"text": "t"},
            headers=env.auth(),
            timeout=aiohttp.ClientTimeout(total=0.2),
        )
    env.fake.inject("timeout")
    env.fake.timeout_seconds = 0.05
    assert (await _send(env, BOB)).status == 503
    assert env.fake.events == []


# ------------------------------------------------------------------------ fault model


def test_fault_model_is_deterministic_from_its_seed() -> None:
    def labels(seed: int) -> list[str]:
        model = FaultModel(seed)
        return [model.decide("POST", f"/2/path/{i % 3}").label for i in range(300)]

    assert labels(5) == labels(5)
    assert labels(5) != labels(6)
    drawn = set(labels(5))
    assert {"ok", "5xx", "timeout", "hang_after_recording", "lost_response", "reset", "401"} <= drawn
    assert {"malformed_before", "malformed_after"} <= drawn and any(d.startswith("429:") for d in drawn)


def test_fault_model_lets_a_path_through_after_max_streak_faults() -> None:
    model = FaultModel(1, mix={"5xx": 1.0}, max_streak=2)
    assert [model.decide("GET", "/a").outcome for _ in range(6)] == ["5xx", "5xx", "ok"] * 2
    token = FaultModel(1, mix={"lost_response": 1.0, "401": 1.0})
    assert {token.decide("POST", "/t", token_endpoint=True).outcome for _ in range(20)} == {"ok"}


async def test_fault_model_401_revokes_the_token_and_a_refresh_recovers(env: Env) -> None:
    grant = env.fake.issue_token(ALICE)
    assert grant.refresh_token is not None
    headers = {"Authorization": f"Bearer {grant.access_token}"}
    env.fake.fault_model = FaultModel(3, mix={"401": 1.0}, max_streak=1)
    assert (await _send(env, BOB, headers=headers)).status == 401
    assert (await _send(env, BOB, headers=headers)).status == 401  # revoked now, not a fault any more
    env.fake.fault_model = None
    status, body = await _refresh(env, grant.refresh_token)
    assert status == 200
    assert (await _send(env, BOB, headers={"Authorization": f"Bearer {body['access_token']}"})).status == 201
    assert env.fake.violations == []


@pytest.mark.parametrize("shape", sorted(set(RATE_LIMIT_SHAPES)))
async def test_fault_model_429_header_shapes(env: Env, shape: str) -> None:
    env.fake.fault_model = FaultModel(0, mix={"429": 1.0}, shapes=(shape,), reset_in=(2.0, 2.0))
    resp = await _send(env, BOB)
    assert resp.status == 429 and env.fake.events == []
    reset = resp.headers.get("x-rate-limit-reset")
    expected = {
        "plausible": str(int(env.clock.now + 2)),
        "day_cap": str(int(env.clock.now + 2)),
        "milliseconds": str(int((env.clock.now + 2) * 1000)),
        "negative": "-1",
        "in_the_past": str(int(env.clock.now - 3600)),
        "not_a_number": "soon",
        "missing": None,
    }
    if shape == "past_9999":
        assert reset is not None and int(reset) > 253_402_300_799
    else:
        assert reset == expected[shape]
    if shape == "missing":
        assert not [h for h in resp.headers if h.lower().startswith("x-")]
    assert env.fake.violations == []


async def test_fault_model_faults_after_recording_keep_the_dm(env: Env) -> None:
    env.fake.timeout_seconds = 5.0
    for outcome in ("lost_response", "hang_after_recording"):
        env.fake.fault_model = FaultModel(0, mix={outcome: 1.0})
        with pytest.raises((aiohttp.ClientConnectionError, TimeoutError)):
            await env.http.post(
                DM_WITH.format(BOB),
                json={"text": outcome},
                headers=env.auth(),
                timeout=aiohttp.ClientTimeout(total=0.3),
            )
    env.fake.fault_model = FaultModel(0, mix={"malformed_after": 1.0})
    cut = await _send(env, BOB, "cut")
    assert cut.status == 201
    with pytest.raises(ValueError):
        await cut.json()
    assert [e.text for e in env.fake.events] == ["lost_response", "hang_after_recording", "cut"]
    env.fake.fault_model = FaultModel(
        0, mix={"malformed_before": 1.0, "reset": 1.0, "5xx": 1.0, "timeout": 1.0}, max_streak=100
    )
    env.fake.timeout_seconds = 0.05
    for _ in range(8):
        with contextlib.suppress(aiohttp.ClientConnectionError):
            assert (await _send(env, BOB, "never")).status in (500, 502, 503, 504)
    assert len(env.fake.events) == 3
    assert env.fake.violations == []  # the cut answers are deliberately not validated


async def test_a_fault_can_let_the_first_matching_requests_through(env: Env) -> None:
    env.fake.inject("503", path_contains="/2/users/me", after=2)
    statuses = []
    for _ in range(4):
        async with env.http.get("/2/users/me", headers=env.auth()) as r:
            statuses.append(r.status)
    assert statuses == [200, 200, 503, 200]


async def test_reading_an_implicit_one_to_one_conversation_creates_nothing(env: Env) -> None:
    conv = "-".join(sorted((ALICE, DAVE), key=int))
    params = {"max_results": "1", "dm_event.fields": "text", "event_types": "MessageCreate"}
    async with env.http.get(f"/2/dm_conversations/{conv}/dm_events", params=params, headers=env.auth()) as r:
        assert r.status == 200 and "data" not in await r.json()
    assert env.fake.conversations == {}
    async with env.http.get(
        f"/2/dm_conversations/{'-'.join(sorted((BOB, DAVE), key=int))}/dm_events",
        params=params,
        headers=env.auth(),
    ) as r:
        assert r.status == 404  # not ALICE's conversation: X will not say whether it exists


async def test_fault_path_filter(env: Env) -> None:
    env.fake.inject("503", path_contains="/2/oauth2/token")
    assert (await _send(env, BOB)).status == 201  # DM POSTs unaffected
    grant = env.fake.issue_token(ALICE)
    assert grant.refresh_token is not None
    status, _ = await _refresh(env, grant.refresh_token)
    assert status == 503
    status, _ = await _refresh(env, grant.refresh_token)
    assert status == 200


# ------------------------------------------------------------------------------ media


async def test_media_one_shot_and_attach(env: Env) -> None:
    form = aiohttp.FormData()
    form.add_field("media", _png(), filename="p.png", content_type="image/png")
    form.add_field("media_category", "dm_image")
    async with env.http.post("/2/media/upload", data=form, headers=env.auth()) as r:
        assert r.status == 200
        data = (await r.json())["data"]
    assert data["image"] == {"image_type": "image/png", "w": 3, "h": 2}
    assert data["media_key"] == f"3_{data['id']}" and data["size"] == len(_png())
    assert env.fake.media[data["id"]].owner_id == ALICE and env.fake.media[data["id"]].category == "dm_image"
    body = {"text": "pic", "attachments": [{"media_id": data["id"]}]}
    async with env.http.post(DM_WITH.format(BOB), json=body, headers=env.auth()) as r:
        assert r.status == 201
    assert env.fake.events[-1].media_ids == (data["id"],)
    async with env.http.post(DM_WITH.format(ALICE), json=body, headers=env.auth(BOB)) as r:
        assert r.status == 400  # Bob did not upload it
    assert len(env.fake.events) == 1
    assert env.fake.violations == []


async def test_media_size_limit(env: Env) -> None:
    assert env.fake.media_size_limits["image"] == 5 * 1024 * 1024
    env.fake.media_size_limits["image"] = 10
    form = aiohttp.FormData()
    form.add_field("media", b"x" * 11, filename="big.png", content_type="image/png")
    form.add_field("media_category", "dm_image")
    async with env.http.post("/2/media/upload", data=form, headers=env.auth()) as r:
        assert r.status == 400
    init = {"media_type": "video/mp4", "media_category": "dm_video", "total_bytes": 512 * 1024 * 1024 + 1}
    async with env.http.post("/2/media/upload/initialize", json=init, headers=env.auth()) as r:
        assert r.status == 400
    assert env.fake.media == {} and env.fake.violations == []


async def test_media_chunked_with_processing(env: Env) -> None:
    headers = env.auth()
    init = {"media_type": "video/mp4", "media_category": "dm_video", "total_bytes": 6}
    async with env.http.post("/2/media/upload/initialize", json=init, headers=headers) as r:
        media_id = (await r.json())["data"]["id"]
    for index, chunk in enumerate([b"abc", b"def"]):
        form = aiohttp.FormData()
        form.add_field("media", chunk, filename="blob", content_type="application/octet-stream")
        form.add_field("segment_index", str(index))
        async with env.http.post(f"/2/media/upload/{media_id}/append", data=form, headers=headers) as r:
            assert r.status == 200 and "expires_at" in (await r.json())["data"]
    async with env.http.post(f"/2/media/upload/{media_id}/finalize", headers=headers) as r:
        final = (await r.json())["data"]
    assert final["processing_info"]["state"] == "pending" and final["size"] == 6
    attach = {"attachments": [{"media_id": media_id}]}
    async with env.http.post(DM_WITH.format(BOB), json=attach, headers=headers) as r:
        assert r.status == 400  # not processed yet
    states = []
    for _ in range(2):
        params = {"media_id": media_id, "command": "STATUS"}
        async with env.http.get("/2/media/upload", params=params, headers=headers) as r:
            states.append((await r.json())["data"]["processing_info"]["state"])
    assert states == ["in_progress", "succeeded"]
    assert env.fake.media[media_id].data == b"abcdef"
    async with env.http.post(DM_WITH.format(BOB), json=attach, headers=headers) as r:
        assert r.status == 201
    assert env.fake.violations == []


# ------------------------------------------------------------------------- validation


async def test_invalid_requests_are_rejected_and_recorded(env: Env) -> None:
    bad_group = {"conversation_type": "Group", "participant_ids": [BOB], "message": {"text": "x"}}
    async with env.http.post("/2/dm_conversations", json=bad_group, headers=env.auth()) as r:
        assert r.status == 400
        assert (await r.json())["type"] == "https://api.x.com/2/problems/invalid-request"
    assert "participant_ids" in env.fake.violations[-1] and "too short" in env.fake.violations[-1]
    async with env.http.post(DM_WITH.format(BOB), json={"text": "x", "extra": 1}, headers=env.auth()) as r:
        assert r.status == 400
    assert "Additional properties" in env.fake.violations[-1]
    params = {"dm_event.fields": "sender_id"}  # dropped from the 2.167 enum; use expansions=sender_id
    async with env.http.get(
        f"/2/dm_conversations/with/{BOB}/dm_events", params=params, headers=env.auth()
    ) as r:
        assert r.status == 400
    async with env.http.get("/2/nonexistent", headers=env.auth()) as r:
        assert r.status == 404
    form = aiohttp.FormData()
    form.add_field("media", b"x", filename="x.png", content_type="image/png")
    async with env.http.post("/2/media/upload", data=form, headers=env.auth()) as r:
        assert r.status == 400  # media_category is required
    async with env.http.get(f"/2/users/{BOB}", headers=env.auth()) as r:
        assert r.status == 404  # in the spec, but not implemented by the fake
    assert "not implemented by FakeX" in env.fake.violations[-1]
    assert len(env.fake.violations) == 6
    assert env.fake.events == [] and env.fake.media == {}


async def test_aiohttp_server_fixture(aiohttp_server: Any, aiohttp_client: Any) -> None:
    fake = FakeX()
    fake.add_user(ALICE, "alice")
    client = await aiohttp_client(await aiohttp_server(fake.app))
    async with client.get(
        "/2/users/me", headers={"Authorization": f"Bearer {fake.issue_token(ALICE).access_token}"}
    ) as r:
        assert r.status == 200 and (await r.json())["data"]["username"] == "alice"
    assert fake.app is fake.app


def test_validator_matching_prefers_literal_segments() -> None:
    spec = SpecValidator.default()
    found = spec.match("POST", "/2/dm_conversations/with/123/messages")
    assert found is not None and found.path_template == "/2/dm_conversations/with/{participant_id}/messages"
    assert found.path_params == {"participant_id": "123"}
    found = spec.match("GET", "/2/dm_conversations/with/55/dm_events")
    assert found is not None and found.path_template == "/2/dm_conversations/with/{participant_id}/dm_events"
    assert spec.match("PUT", "/2/dm_events/1") is None
    assert spec.validate_request("PUT", "/2/dm_events/1", {}, None, b"") != []


def test_validator_catches_bad_responses_and_allows_documented_drift() -> None:
    spec = SpecValidator.default()
    template = "/2/dm_conversations/with/{participant_id}/messages"
    good = {"data": {"dm_conversation_id": "1-2", "dm_event_id": "3"}}
    assert spec.validate_response("POST", template, 201, "application/json", good) == []
    assert (
        spec.validate_response("POST", template, 201, "application/json", {"data": {"dm_event_id": "3"}})
        != []
    )
    blank = {
        "title": "Too Many Requests",
        "type": "about:blank",
        "status": 429,
        "detail": "Too Many Requests",
    }
    legacy = {"errors": [{"code": 88, "message": "Rate limit exceeded"}]}
    assert spec.validate_response("POST", template, 429, "application/problem+json", blank) == []
    assert spec.validate_response("POST", template, 429, "application/json", legacy) == []
    # Only those two shapes, only for errors, only with their own content type.
    assert spec.validate_response("POST", template, 429, "application/problem+json", {**blank, "x": 1}) != []
    assert (
        spec.validate_response("POST", template, 429, "application/json", {"errors": [{"code": "88"}]}) != []
    )
    assert spec.validate_response("POST", template, 429, "application/json", blank) != []
    assert spec.validate_response("POST", template, 201, "application/json", legacy) != []
    old_uri = {
        "title": "Not Found Error",
        "type": "https://api.twitter.com/2/problems/resource-not-found",
        "detail": "d",
        "resource_type": "user",
    }
    assert spec.validate_response("POST", template, 404, "application/problem+json", old_uri) != []
    assert (
        spec.validate_response(
            "GET", "/2/dm_events/{event_id}", 200, "application/json", {"data": {"created_at": "x"}}
        )
        != []
    )
