"""Who may bridge a channel, and who may change a bridge someone made.

A mapping sends DMs in its maker's name, so it belongs to them: only they (or the
owner of the X account it sends as) and workspace admins or owners may unlink or
replace it. ``XDM_ADMIN_ONLY`` and ``XDM_ALLOWED_USERS`` narrow who may make one.
The bot must be in a channel before it is bridged, or no message would ever arrive.

Kept apart from ``bridge.commands`` so the rules read in one place; every refusal is a
``CommandError`` whose text names who can, or which setting applies.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bridge.errors import CommandError
from bridge.model import ChannelMapping, SlackMember
from bridge.ports import SlackClient

log = logging.getLogger("bridge.permissions")


@dataclass(frozen=True)
class Policy:
    """The operator's rules for making mappings (``XDM_ADMIN_ONLY``, ``XDM_ALLOWED_USERS``)."""

    admin_only: bool = False
    allowed_users: frozenset[str] = frozenset()

    @property
    def restricted(self) -> bool:
        return self.admin_only or bool(self.allowed_users)


def policy_refusal(policy: Policy, user_id: str, member: SlackMember | None) -> str | None:
    """Why ``user_id`` may not make a mapping under ``policy``, or None when they may."""
    if not policy.restricted or (member is not None and member.is_admin_or_owner):
        return None
    if not policy.admin_only and user_id in policy.allowed_users:
        return None  # listed: no need for Slack's word on their role
    if member is None:
        return "Slack did not say whether you are a workspace admin, which bridging here needs; try again."
    if policy.admin_only:
        return (
            "Only workspace admins and owners may bridge channels on this bridge (XDM_ADMIN_ONLY is set). "
            "Ask one of them."
        )
    return (
        "You are not among the people allowed to bridge channels (XDM_ALLOWED_USERS lists them; "
        "workspace admins and owners always may). Ask one of them, or the bridge's operator."
    )


def owners_of(mapping: ChannelMapping, account_owner: str | None) -> list[str]:
    """The Slack users a mapping belongs to: who made it, and whose X account it sends as."""
    found = [mapping.created_by, account_owner or ""]
    return [user for user in dict.fromkeys(found) if user]


class Permissions:
    """Checks a command against the rules; raises ``CommandError`` with the refusal."""

    def __init__(self, slack: SlackClient, policy: Policy | None = None) -> None:
        self._slack = slack
        self._policy = policy or Policy()

    async def may_map(self, team_id: str, channel_id: str, user_id: str) -> None:
        """``user_id`` may bridge this channel: the policy allows them and the bot is in it."""
        if self._policy.restricted:
            refusal = policy_refusal(self._policy, user_id, await self._slack.member(team_id, user_id))
            if refusal is not None:
                log.info("mapping refused by policy", extra={"team": team_id, "user": user_id})
                raise CommandError(refusal)
        present = await self._slack.bot_in_channel(team_id, channel_id)
        if present is None:
            raise CommandError("Slack did not say whether I am in this channel; try again in a moment.")
        if not present:
            name = await self._slack.bot_name(team_id)
            raise CommandError(
                f"I am not in this channel, so nothing posted here would reach me. "
                f"Run `/invite @{name}` first, then run the command again."
            )

    async def may_change(
        self, team_id: str, user_id: str, mapping: ChannelMapping, account_owner: str | None, what: str
    ) -> None:
        """``user_id`` may unlink or replace ``mapping`` (``what`` says which, for the refusal)."""
        owners = owners_of(mapping, account_owner)
        if user_id in owners:
            return
        member = await self._slack.member(team_id, user_id)
        if member is not None and member.is_admin_or_owner:
            return
        log.info(
            "mapping change refused", extra={"team": team_id, "channel": mapping.channel_id, "user": user_id}
        )
        named = " or ".join(f"<@{owner}>" for owner in owners) or "the person who bridged it"
        raise CommandError(
            f"This channel's bridge belongs to {named}: only they or a workspace admin or owner "
            f"can {what} it."
        )
