"""The connect flow, attacked: forwarded links, other people's states, forged confirmations."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from pathlib import Path

import aiohttp

from tests.harness import Bridge, authorize_url, browser_cookies, running_bridge, wait_until


def accounts(bridge: Bridge) -> list[tuple[str, str]]:
    with sqlite3.connect(bridge.db_path) as db:
        return db.execute("SELECT slack_user_id, x_user_id FROM accounts").fetchall()


async def through_x(session: aiohttp.ClientSession, x_url: str) -> tuple[int, str]:
    """The browser at X's consent (approving) and back at the bridge's callback."""
    async with session.get(x_url, allow_redirects=False) as response:
        assert response.status == 302
        callback = response.headers["Location"]
    async with session.get(callback) as response:
        return response.status, await response.text()


async def test_the_link_opens_the_bridge_page_naming_who_the_account_will_belong_to(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        ack, _ = await bridge.command("connect")
        page_url = authorize_url(ack.text)
        assert page_url.startswith(f"{bridge.url}/x/connect?state=") and bridge.x_url not in ack.text
        async with bridge.session.get(page_url) as response:
            page = await response.text()
            assert response.status == 200
            assert response.headers["X-Frame-Options"] == "DENY"  # no hidden "Continue" in a frame
            assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
            assert response.headers["Referrer-Policy"] == "no-referrer"
        assert "ada" in page and "U100" in page and "fake" in page and "T0001" in page
        assert "Continue to X" in page and bridge.x_url not in page  # X only after confirming

        x_url = await bridge.confirm(page_url)
        assert x_url.startswith(bridge.x_url)
        status, done = await through_x(bridge.session, x_url)
        assert status == 200 and "@bridge_owner" in done and "U100" in done and "Confirm in Slack" in done
        assert accounts(bridge) == []  # bound only once U100 confirms in Slack
        _, click_url = await bridge.answer_connect("U100")
        told = await bridge.follow_up(click_url)
        assert "Connected X account @bridge_owner" in told["text"]
        assert accounts(bridge) == [("U100", "1000")]


async def test_a_forwarded_x_link_cannot_be_finished_in_another_browser(tmp_path: Path) -> None:
    """The attacker confirms their own flow, then phishes the victim with X's authorize URL."""
    async with running_bridge(tmp_path) as bridge:
        ack, _ = await bridge.command("connect", user="U200")
        x_url = await bridge.confirm(authorize_url(ack.text))  # in the attacker's browser
        bridge.x.authorizing_user_id = "2001"  # the victim approves on X, in their own browser
        async with aiohttp.ClientSession(cookie_jar=browser_cookies()) as victim:
            status, page = await through_x(victim, x_url)
        assert status == 400 and "did not confirm" in page and "Nothing was connected" in page
        assert accounts(bridge) == []
        assert [r["grant_type"] for r in bridge.x.token_requests] == []  # the code was never even used


async def test_another_users_state_is_named_on_the_page_and_binds_to_one_browser(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        ack, _ = await bridge.command("connect", user="U200")
        link = authorize_url(ack.text)
        async with bridge.session.get(link) as response:
            assert "grace" in await response.text()  # the victim sees whose Slack account it is
        await bridge.confirm(link)  # the attacker confirms first ...
        async with (
            aiohttp.ClientSession(cookie_jar=browser_cookies()) as victim,
            victim.get(link) as response,  # ... so the link is spent for anyone else
        ):
            assert response.status == 400
        assert accounts(bridge) == []


async def test_a_confirmation_posted_from_another_site_is_refused(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        ack, _ = await bridge.command("connect", user="U200")
        state = re.search(r"state=([\w-]+)", authorize_url(ack.text))
        assert state is not None
        # An auto-submitting form elsewhere: the victim's browser sends no SameSite=Strict cookie.
        async with aiohttp.ClientSession(cookie_jar=browser_cookies()) as victim:
            form = {"state": state.group(1), "csrf": "guessed"}
            async with victim.post(f"{bridge.url}/x/connect", data=form, allow_redirects=False) as response:
                assert response.status == 403 and "Location" not in response.headers
        with sqlite3.connect(bridge.db_path) as db:
            assert db.execute("SELECT browser_hash FROM oauth_states").fetchall() == [(None,)]


async def test_used_and_expired_states_are_refused_and_store_nothing(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        ack, _ = await bridge.command("connect")
        x_url = await bridge.confirm(authorize_url(ack.text))
        async with bridge.session.get(x_url, allow_redirects=False) as response:
            callback = response.headers["Location"]
        async with bridge.session.get(callback) as response:
            assert response.status == 200
        async with bridge.session.get(callback) as response:  # replayed
            assert response.status == 400
        await bridge.answer_connect("U100")
        await wait_until(lambda: accounts(bridge) != [], 10.0, "U100's confirmation")

        ack, _ = await bridge.command("connect", user="U200")
        with sqlite3.connect(bridge.db_path) as db:
            db.execute("UPDATE oauth_states SET expires_at = 0 WHERE used = 0")
        async with bridge.session.get(authorize_url(ack.text)) as response:
            assert response.status == 400 and "expired" in await response.text()
        assert accounts(bridge) == [("U100", "1000")]


async def test_flow_cookies_are_secure_behind_an_https_public_url(tmp_path: Path) -> None:
    """Behind the platform's router the bridge itself is spoken to in plain http: the cookies
    are Secure because PUBLIC_URL is https, not because of how the request arrived."""
    async with running_bridge(tmp_path, env={"PUBLIC_URL": "https://bridge.example"}) as bridge:
        ack, _ = await bridge.command("connect")
        link = authorize_url(ack.text).replace("https://bridge.example", bridge.url)
        async with aiohttp.ClientSession() as browser:  # keeps no Secure cookie over http
            async with browser.get(link) as response:
                page = await response.text()
                [csrf_cookie] = response.headers.getall("Set-Cookie")
            fields = dict(re.findall(r"name=(\w+) value='([^']*)'", page))
            async with browser.post(
                f"{bridge.url}/x/connect",
                data=fields,
                headers={"Cookie": f"xdm_csrf={fields['csrf']}"},
                allow_redirects=False,
            ) as response:
                assert response.status == 303
                flow_cookie = next(c for c in response.headers.getall("Set-Cookie") if "xdm_flow_" in c)
        for cookie, same_site in ((csrf_cookie, "Strict"), (flow_cookie, "Lax")):
            attributes = {a.strip().split("=")[0].lower(): a for a in cookie.split(";")[1:]}
            assert {"secure", "httponly", "path", "max-age"} <= attributes.keys(), cookie
            assert attributes["samesite"].strip() == f"SameSite={same_site}", cookie


async def test_another_flows_cookie_or_an_expired_flow_does_not_finish_it(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        # The attacker's own flow, confirmed in their browser: they hold its cookie's value.
        attacker = aiohttp.ClientSession(cookie_jar=browser_cookies())
        async with attacker:
            ack, _ = await bridge.command("connect", user="U200")
            await bridge.confirm(authorize_url(ack.text), attacker)
            [own] = [c.value for c in attacker.cookie_jar if c.key.startswith("xdm_flow_")]
            # The victim's flow: the attacker has its callback (a leaked URL) and renames their
            # cookie to this flow's name.
            ack, _ = await bridge.command("connect")
            x_url = await bridge.confirm(authorize_url(ack.text))
            async with bridge.session.get(x_url, allow_redirects=False) as response:
                callback = response.headers["Location"]
            state = re.search(r"state=([\w-]+)", callback)
            assert state is not None
            name = f"xdm_flow_{hashlib.sha256(state.group(1).encode()).hexdigest()[:16]}"
            async with attacker.get(callback, headers={"Cookie": f"{name}={own}"}) as response:
                page = await response.text()
                # Refused on the cookie's value, not for want of a cookie.
                assert response.status == 400 and "cannot be used" in page, page
        assert accounts(bridge) == []
        # The victim's own browser, after the flow's 10 minutes: refused too, nothing stored.
        with sqlite3.connect(bridge.db_path) as db:
            db.execute("UPDATE oauth_states SET expires_at = 0")
        async with bridge.session.get(callback) as response:
            assert response.status == 400 and "expired" in await response.text()
        assert accounts(bridge) == [] and bridge.x.token_requests == []
