"""Consent before DMs are stored (X's Developer Policy): said before X and in the question whose
click binds the account, kept (who, when, which words), and said in the channel on bridging."""

from __future__ import annotations

import re
from pathlib import Path

from adapters.store.consents import ConsentStore
from adapters.web.app import SERVICES
from tests.harness import ALICE, ME, authorize_url, running_bridge
from tests.security.test_connect_confirm import authorize_in

SAID = "every member of the channel can read them"


async def test_the_page_and_the_question_say_what_is_agreed_and_the_click_records_it(tmp_path: Path) -> None:
    async with running_bridge(tmp_path, env={"RETENTION_DAYS": "45"}) as bridge:
        ack, _ = await bridge.command("connect")
        async with bridge.session.get(authorize_url(ack.text)) as response:
            page = await response.text()
        assert SAID in page and "keeps its own copy for 45 days" in page

        await bridge.connect()  # the harness approves on X, then clicks Connect in Slack
        [question] = [
            c
            for c in bridge.slack.calls
            if c.method == "chat.postEphemeral" and "Confirm to connect" in str(c.params)
        ]
        asked = str(question.params.get("text") or question.params.get("blocks"))
        assert SAID in asked and "@bridge_owner" in asked

        consents = ConsentStore(bridge.app[SERVICES].store.engine)
        [consent] = await consents.consents_of("T0001", "U100")
        assert (consent.x_user_id, consent.x_username) == (ME, "bridge_owner")
        assert SAID in consent.text and "as @bridge_owner" in consent.text
        assert re.search(r"for 45 days", consent.text)
        assert consent.given_at > 0


async def test_cancel_records_no_consent_and_bridging_says_who_reads_what(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await authorize_in(bridge, bridge.session, ALICE, user="U200")
        _, response_url = await bridge.answer_connect("U200", confirm=False)
        assert "Cancelled" in (await bridge.follow_up(response_url))["text"]
        consents = ConsentStore(bridge.app[SERVICES].store.engine)
        assert await consents.consents_of("T0001", "U200") == []

        await bridge.connect()
        _, response_url = await bridge.command("dm @alice")
        told = await bridge.follow_up(response_url)
        assert told["response_type"] == "in_channel"
        assert "as @bridge_owner (<@U100>'s X account)" in told["text"]
        assert "posted here for every member of this channel to read" in told["text"]
        assert len(await consents.consents_of("T0001", "U100")) == 1
