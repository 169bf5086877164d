"""X's push, the pure parts: what the CRC route signs, and reading a signed delivery."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.web.logs import Sparse
from adapters.x import push

SECRET = "consumer-secret"


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_no_token_the_crc_route_signs_is_a_delivery(token: str) -> None:
    """The CRC answer is the HMAC a delivery is signed with: a signed token must never read as one."""
    answer = push.crc_response(SECRET, token)
    if answer is None:
        return
    with pytest.raises(push.MalformedDelivery):
        push.parse_delivery(token.encode())


@pytest.mark.parametrize(
    "token", ["d0uKpSQxv0kUOiTy2NC2RuYxq4AX3MIdtOgu5v2nNoA", "abcdefgh", "a+b/c=d_e-f" * 3]
)
def test_tokens_shaped_as_xs_are_answered(token: str) -> None:
    assert push.crc_response(SECRET, token) == {"response_token": push._sign(SECRET, token.encode())}


@pytest.mark.parametrize("token", ["", "short", "a" * 129, "has space", '{"data": {}}', "ünïcode-token"])
def test_other_tokens_are_not_signed(token: str) -> None:
    assert push.crc_response(SECRET, token) is None


def test_a_recurring_line_is_logged_once_per_period_with_what_was_folded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    sparse = Sparse(logging.getLogger("test.sparse"), every=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "test.sparse"):
        logged = [sparse.warning("refused", "signature") for _ in range(100)]
        assert sparse.warning("refused", "crc")  # another reason has its own period
        now[0] = 61.0
        assert sparse.warning("refused", "signature")
    assert logged.count(True) == 1
    records = [r for r in caplog.records if r.name == "test.sparse"]
    assert [(r.__dict__["reason"], r.__dict__["similar_since_last"]) for r in records] == [
        ("signature", 0),
        ("crc", 0),
        ("signature", 99),
    ]
