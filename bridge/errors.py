"""The bridge's error hierarchy.

::

    BridgeError
    ├── ConfigError          a setting is missing or malformed (names the variable)
    ├── CommandError         a Slack user's mistake; carries the text they should see
    ├── OAuthStateError      a bad, reused or expired OAuth ``state``
    │   └── OAuthBrowserError    the callback reached a browser that did not confirm the flow
    ├── StoreUnavailable     the database cannot be opened or written (names the path and why)
    ├── Undeliverable        a message the bridge itself cannot send (no account, nothing to send)
    └── XError               something X said or did not say
        ├── XTransient       5xx, timeout, connection error: try again later
        ├── XRateLimited     429: wait until ``reset_at``
        ├── XRefused         a permanent 4xx: do not retry, tell the author
        │   └── XMediaUnavailable  the attached media id is unknown or expired: upload again
        └── XAuthExpired     401 or a refresh that failed for good: reconnect
    └── SlackError           something Slack's Web API said or did not say
        ├── SlackTransient   5xx, timeout, connection error: try again later
        ├── SlackRateLimited 429: wait ``retry_after`` seconds
        └── SlackRefused     a permanent error (channel_not_found, not_in_channel…)
            ├── SlackChannelRefused  the channel itself: nothing goes there until it changes
            └── SlackMessageRefused  this one message, for what it is (msg_too_long…)

Adapters translate library exceptions into these at the boundary; the core never
sees an aiohttp or slack_sdk exception. A message that fails for good carries a
:class:`Failure`, set where the cause is known, so that counting failures never
depends on how the sentence for the author is worded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Failure(StrEnum):
    """Why a message will never reach X, in few words (the ``reason`` label of the failure metric)."""

    RECIPIENT_REFUSES_DMS = "recipient_refuses_dms"
    SPAM_FILTER = "spam_filter"
    DUPLICATE = "duplicate"
    TOO_LONG = "too_long"
    APP_NOT_PERMITTED = "app_not_permitted"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    BAD_REQUEST = "bad_request"
    ACCOUNT_DISCONNECTED = "account_disconnected"
    EMPTY_MESSAGE = "empty_message"
    FILE_UNUSABLE = "file_unusable"
    OTHER = "other"


_BY_STATUS = {400: Failure.BAD_REQUEST, 403: Failure.FORBIDDEN, 404: Failure.NOT_FOUND}


def failure_of(error: BaseException) -> Failure:
    """The :class:`Failure` an error carries (``OTHER`` for one that carries none)."""
    failure = getattr(error, "failure", None)
    return failure if isinstance(failure, Failure) else Failure.OTHER


class BridgeError(Exception):
    """Root of every error the bridge raises on purpose."""


class ConfigError(BridgeError):
    """A required setting is missing or malformed."""


class CommandError(BridgeError):
    """A `/xdm` command cannot be done; ``str(err)`` is shown to the user."""


class OAuthStateError(BridgeError):
    """The OAuth callback carried a state we did not issue, already used, or expired."""


class OAuthBrowserError(OAuthStateError):
    """The flow was confirmed in another browser (or not at all): its cookie is missing here."""


class OAuthScopeError(BridgeError):
    """X granted fewer scopes than the bridge needs; ``str(err)`` names the missing ones."""


class SlackUnreachable(BridgeError):
    """The bridge could not ask a Slack user something; ``str(err)`` tells them what to do."""


class StoreUnavailable(BridgeError):
    """The database cannot be opened, created or migrated; ``str(err)`` names the path and why."""


class Undeliverable(BridgeError):
    """A message the bridge cannot send for a reason of its own; ``str(err)`` tells the author."""

    def __init__(self, message: str, failure: Failure) -> None:
        super().__init__(message)
        self.failure = failure


@dataclass
class RateFacts:
    """What one X response said about the budgets it draws on (all optional).

    ``window_*`` is the endpoint's own (15-minute) window, ``user_day_*`` the
    per-user 24-hour cap and ``app_day_*`` the per-app 24-hour cap.
    Resets are Unix epoch seconds.
    """

    window_limit: int | None = None
    window_remaining: int | None = None
    window_reset: float | None = None
    user_day_limit: int | None = None
    user_day_remaining: int | None = None
    user_day_reset: float | None = None
    app_day_limit: int | None = None
    app_day_remaining: int | None = None
    app_day_reset: float | None = None

    def is_empty(self) -> bool:
        return all(v is None for v in vars(self).values())


class XError(BridgeError):
    """X answered with an error, or did not answer."""

    def __init__(self, message: str, *, status: int | None = None, facts: RateFacts | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.facts = facts or RateFacts()


class XTransient(XError):
    """A failure worth retrying later: 5xx, timeout, lost connection."""


class XSentUnconfirmed(XError):
    """X answered 2xx to a send without saying which DM it made (no ``dm_event_id``, or a body
    that cannot be read). A 2xx is a send: it is settled by reading back, never sent again.
    ``conversation_id`` is the conversation X named, if it named one."""

    def __init__(
        self,
        message: str,
        *,
        conversation_id: str | None = None,
        status: int | None = None,
        facts: RateFacts | None = None,
    ) -> None:
        super().__init__(message, status=status, facts=facts)
        self.conversation_id = conversation_id


class XRateLimited(XError):
    """HTTP 429. ``reset_at`` is the latest applicable reset (epoch seconds)."""

    def __init__(self, message: str, *, reset_at: float, facts: RateFacts | None = None) -> None:
        super().__init__(message, status=429, facts=facts)
        self.reset_at = reset_at


class XRefused(XError):
    """A permanent refusal (400, 403, 404…): ``str(err)`` explains it to a person.

    ``failure`` is what X's error code says when the adapter knows it, else what the status says.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        facts: RateFacts | None = None,
        failure: Failure | None = None,
    ) -> None:
        super().__init__(message, status=status, facts=facts)
        self.failure = failure or _BY_STATUS.get(status or 0, Failure.OTHER)


class XMediaUnavailable(XRefused):
    """X refused a DM because of its attachment: the media id is unknown to X, or expired."""


class XAuthExpired(XError):
    """The access token was rejected, or the account must be reconnected."""


@dataclass
class XAuthRevoked(BridgeError):
    """A token refresh failed for good: the account needs `/xdm connect` again."""

    reason: str = field(default="refresh token rejected")

    def __str__(self) -> str:
        return self.reason


class SlackError(BridgeError):
    """Slack's Web API answered with an error, or did not answer."""


class SlackTransient(SlackError):
    """Worth retrying later."""


class SlackRateLimited(SlackError):
    """HTTP 429 from Slack: try again after ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SlackRefused(SlackError):
    """A permanent refusal (the bot is not in the channel, the channel is gone…)."""


class SlackChannelRefused(SlackRefused):
    """Slack refuses the channel itself (archived, the bot not in it, gone): nothing can be
    posted or shared there until someone changes that, whatever is sent."""


class SlackMessageRefused(SlackRefused):
    """Slack refuses this one message for what it is (too long, bad blocks or metadata…): sent
    again it would be refused again, while another message to the same channel may be taken.
    ``error`` is Slack's word for it."""

    def __init__(self, message: str, *, error: str) -> None:
        super().__init__(message)
        self.error = error
