"""Slack's surfaces against Slack's 3 seconds: `/xdm` opening the form, the Home, the people search.

    .venv/bin/python bench/surfaces.py                 # about 20 seconds
    .venv/bin/python bench/surfaces.py --runs 100 --channels 40

The real bridge (in this process), the fake Slack and the fake X run on loopback, SQLite.
Figures, each from the moment the signed request is sent:

* `/xdm` with no text: until its answer (the modal is opened with views.open before the answer,
  because the command's trigger id lives 3 s);
* app_home_opened: until views.publish reaches the fake Slack, for a person with ``--channels``
  bridged channels (each one's state is read from the store);
* the people search (block_suggestion): first lookup (one X request) and a repeat (cached).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from adapters.sandbox.fake_slack_views import SurfaceSender  # noqa: E402
from adapters.web.app import SERVICES  # noqa: E402
from bridge.modals import PEOPLE_ACTION, PEOPLE_BLOCK  # noqa: E402
from bridge.model import ChannelMapping, MappingKind  # noqa: E402
from tests.harness import ME, Bridge, running_bridge, wait_until  # noqa: E402


def summary(name: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    p50 = statistics.median(ms)
    return f"{name:<38} n={len(ms):<4} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  max {ms[-1]:7.1f} ms"


async def home_round_trip(bridge: Bridge, ui: SurfaceSender) -> float:
    """Seconds from app_home_opened until the Home's views.publish reaches Slack."""
    before = len(bridge.slack.calls_to("views.publish"))
    started = time.perf_counter()
    await ui.home_opened("U100")
    await wait_until(lambda: len(bridge.slack.calls_to("views.publish")) > before, 10.0, "publish")
    return time.perf_counter() - started


async def main(runs: int, channels: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with running_bridge(Path(tmp)) as bridge:
            await bridge.connect()
            store = bridge.app[SERVICES].store
            account = await store.account_for_user("T0001", "U100")
            assert account is not None
            for n in range(channels):
                bridge.slack.add_channel(f"CB{n:03d}", f"bench-{n}")
                conversation = f"{ME}-{3000 + n}"
                await store.create_mapping(
                    ChannelMapping(
                        "T0001",
                        f"CB{n:03d}",
                        MappingKind.LINK,
                        account.id,
                        conversation,
                        None,
                        "U100",
                        time.time(),
                    )
                )
            ui = SurfaceSender(bridge.sender, bridge.slack)

            opened: list[float] = []
            for _ in range(runs):
                started = time.perf_counter()
                result = await bridge.sender.command(
                    "", user_id="U100", channel_id="C100", response_url=bridge.slack.new_response_url()
                )
                opened.append(time.perf_counter() - started)
                assert result.status == 200 and result.text == "", result.text

            assert sum(1 for c in bridge.slack.calls_to("views.open") if c.ok) == runs
            homes: list[float] = []
            for _ in range(runs):
                homes.append(await home_round_trip(bridge, ui))
            assert f"<#CB{channels - 1:03d}>" in bridge.slack.views.home_text("U100") or channels > 40

            modal = bridge.slack.views.modal("U100")
            assert modal is not None
            first: list[float] = []
            again: list[float] = []
            for handle in ("alice", "bob", "carol", "dora"):
                for bucket in (first, again):
                    started = time.perf_counter()
                    answer = await ui.suggest(
                        modal, action_id=PEOPLE_ACTION, block_id=PEOPLE_BLOCK, value=handle, user_id="U100"
                    )
                    bucket.append(time.perf_counter() - started)
                    assert answer.json()["options"], answer.text

    print(summary("/xdm (no text) → answer, modal open", opened))
    print(summary(f"app_home_opened → views.publish ({channels} ch)", homes))
    print(summary("people search, first lookup (X call)", first))
    print(summary("people search, repeated (cached)", again))
    print(f"slowest `/xdm` answer {max(opened) * 1000:.0f} ms of Slack's 3000 ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--channels", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.channels))
