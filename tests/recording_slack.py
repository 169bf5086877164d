"""The Slack side of delivery, recorded, for unit tests in virtual time (Delivery, its senders,
the read-back): the reactions on the relayed messages and what the authors were told."""

from __future__ import annotations


class RecordingSlack:
    """``reactions`` as ``(ts, name)``, ``(ts, "-name")`` when removed; ``ephemerals`` the texts
    told to authors. With ``tell_authors=False`` telling one fails the test (nothing should)."""

    def __init__(self, *, tell_authors: bool = True) -> None:
        self.reactions: list[tuple[str, str]] = []
        self.ephemerals: list[str] = []
        self._tell_authors = tell_authors

    async def add_reaction(self, team_id: str, channel_id: str, ts: str, name: str) -> None:
        self.reactions.append((ts, name))

    async def remove_reaction(self, team_id: str, channel_id: str, ts: str, name: str) -> None:
        self.reactions.append((ts, f"-{name}"))

    async def post_ephemeral(self, team_id: str, channel_id: str, user_id: str, text: str) -> None:
        if not self._tell_authors:
            raise AssertionError(f"no author is told anything here: {text}")
        self.ephemerals.append(text)
