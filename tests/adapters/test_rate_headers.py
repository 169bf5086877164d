"""X's rate-limit headers are checked at the edge: what no window could say is dropped."""

from __future__ import annotations

import pytest

from adapters.x.api import latest_reset, rate_facts

MAX_RESET_AHEAD = 24 * 3600.0 + 15 * 60.0  # X's longest window, with a margin

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    "raw",
    [
        "1800000000000",  # milliseconds
        "999999999999999999",  # past year 9999
        "-5",
        "1",  # 1970
        str(int(NOW) - 10),  # already past
        str(int(NOW + MAX_RESET_AHEAD) + 10),  # further than X's longest window
        "soon",
        "1e400",
        "１８０００００１００",  # digits, but not ASCII ones
        "",
    ],
)
def test_implausible_reset_is_dropped(raw: str) -> None:
    facts = rate_facts({"x-rate-limit-reset": raw, "x-user-limit-24hour-reset": raw}, NOW)
    assert facts.window_reset is None and facts.user_day_reset is None
    # A 429 with such a reset waits the fallback pause, not forever and not zero.
    assert latest_reset(facts, NOW) == NOW + 60.0


def test_plausible_headers_are_read() -> None:
    headers = {
        "x-rate-limit-limit": "200",
        "x-rate-limit-remaining": "0",
        "x-rate-limit-reset": str(int(NOW) + 900),
        "x-user-limit-24hour-reset": str(int(NOW) + 86_400),
    }
    facts = rate_facts(headers, NOW)
    assert (facts.window_limit, facts.window_remaining) == (200, 0)
    assert facts.window_reset == NOW + 900 and facts.user_day_reset == NOW + 86_400


@pytest.mark.parametrize("raw", ["-1", "2.5", "1" * 11, "many"])
def test_implausible_counts_are_dropped(raw: str) -> None:
    facts = rate_facts({"x-rate-limit-remaining": raw, "x-rate-limit-limit": raw}, NOW)
    assert facts.window_remaining is None and facts.window_limit is None
