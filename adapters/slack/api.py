"""The ``SlackClient`` port over slack_sdk's ``AsyncWebClient``."""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import IO, Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from cachetools import TTLCache
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bridge.errors import (
    SlackChannelRefused,
    SlackMessageRefused,
    SlackRateLimited,
    SlackRefused,
    SlackTransient,
)
from bridge.media import FileTooLarge, FileUnavailable, MediaSource, file_name, human_size, read_exactly
from bridge.model import Button, SlackMember
from bridge.poster import METADATA_TYPE

log = logging.getLogger("adapters.slack.api")

NAME_TTL = 3600.0  # display names change rarely; an hour keeps users.info (Tier 4) quiet
NAME_CACHE_SIZE = 10_000  # least recently used names go first, so memory stays bounded
# A large video may take a while, so no total limit; a stalled connection is what to give up on.
DOWNLOAD_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=15.0, sock_read=60.0)
DOWNLOAD_CHUNK = 256 * 1024
MAX_REDIRECTS = 5
# A host name as DNS spells it: a resolver reads ``evil.example\x00.slack.com`` as evil.example.
_HOSTNAME = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)*")
REDIRECTS = frozenset({301, 302, 303, 307, 308})
# files.info errors worth trying again later (Slack's own words for "not now").
SLACK_TRANSIENT = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "request_timeout", "service_unavailable"}
)
# Slack's answers that mean the bot token itself is refused, for good: waiting will not help,
# only a new SLACK_BOT_TOKEN (reinstalling the app) will.
SLACK_TOKEN_REFUSED = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "no_permission",
        "team_access_not_granted",
        "ekm_access_denied",
    }
)
TOKEN_FIX = (
    "copy the Bot User OAuth Token (xoxb-…) from the Slack app's OAuth & Permissions page "
    "into SLACK_BOT_TOKEN (reinstall the app if it was revoked or removed)"
)
START_UP_CHECK_TIMEOUT = 10  # seconds; a slower Slack is a blip, which the running bridge waits out


async def token_refusal(token: str, base_url: str) -> str | None:
    """Slack's error when it refuses ``token`` for good (one ``auth.test``), else None.

    None too when Slack does not answer or answers with a blip (5xx, ``ratelimited``): the
    bridge starts then, and keeps trying as it runs.
    """
    async with aiohttp.ClientSession() as session:
        client = AsyncWebClient(
            token=token, base_url=base_url, session=session, timeout=START_UP_CHECK_TIMEOUT
        )
        try:
            await client.auth_test()
        except SlackApiError as exc:
            error = exc.response.get("error")
            return str(error) if error in SLACK_TOKEN_REFUSED else None
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None
    return None


class SlackWebClient(AsyncWebClient):
    """An AsyncWebClient that reports a refused bot token (any method) to ``on_token_refused``."""

    on_token_refused: Callable[[str], None] | None = None

    async def api_call(
        self,
        api_method: str,
        *,
        http_verb: str = "POST",
        files: dict[str, Any] | None = None,
        data: dict[str, Any] | aiohttp.FormData | None = None,
        params: dict[str, Any] | None = None,
        json: dict[str, Any] | None = None,
        headers: dict[str, Any] | None = None,
        auth: dict[str, Any] | None = None,
    ) -> AsyncSlackResponse:
        try:
            return await super().api_call(
                api_method,
                http_verb=http_verb,
                files=files,
                data=data,
                params=params,
                json=json,
                headers=headers,
                auth=auth,
            )
        except SlackApiError as exc:
            error = exc.response.get("error")
            if error in SLACK_TOKEN_REFUSED and self.on_token_refused is not None:
                self.on_token_refused(str(error))
            raise


def web_client(
    token: str, base_url: str, session: aiohttp.ClientSession | None = None, *, idempotent: bool = True
) -> SlackWebClient:
    """An AsyncWebClient that retries connection errors, 5xx and 429 (honouring Retry-After).

    ``idempotent=False`` is for calls that must not be repeated blindly (posting a message:
    a lost answer may hide a post Slack made): only a 429, which Slack did not act on, is retried.
    """
    handlers: list[AsyncRetryHandler] = [AsyncRateLimitErrorRetryHandler(max_retry_count=3)]
    if idempotent:
        handlers = [
            AsyncConnectionErrorRetryHandler(max_retry_count=2),
            AsyncServerErrorRetryHandler(max_retry_count=2),
            *handlers,
        ]
    return SlackWebClient(token=token, base_url=base_url, session=session, retry_handlers=handlers)


class SlackApi:
    """Implements ``bridge.ports.SlackClient`` for one workspace's bot token."""

    def __init__(
        self,
        client: AsyncWebClient,
        session: aiohttp.ClientSession,
        poster: AsyncWebClient | None = None,
        *,
        name_cache_size: int = NAME_CACHE_SIZE,
    ) -> None:
        """``poster`` posts X messages; it must not retry anything Slack may have done."""
        self._client = client
        self._poster = poster or client
        self._session = session
        self._names: TTLCache[tuple[str, str], str] = TTLCache(maxsize=name_cache_size, ttl=NAME_TTL)
        self._bot_name: str | None = None
        self._bot_id: str | None = None  # auth.test's: whose posts are the bridge's own
        api = urlsplit(client.base_url)
        self._api_origin = (api.scheme, api.netloc.lower())

    async def add_reaction(self, team_id: str, channel_id: str, ts: str, name: str) -> None:
        try:
            await self._client.reactions_add(channel=channel_id, timestamp=ts, name=name)
        except SlackApiError as exc:
            if exc.response.get("error") != "already_reacted":
                raise

    async def remove_reaction(self, team_id: str, channel_id: str, ts: str, name: str) -> None:
        try:
            await self._client.reactions_remove(channel=channel_id, timestamp=ts, name=name)
        except SlackApiError as exc:
            if exc.response.get("error") != "no_reaction":
                raise

    async def post_ephemeral(self, team_id: str, channel_id: str, user_id: str, text: str) -> None:
        await self._client.chat_postEphemeral(channel=channel_id, user=user_id, text=text)

    async def ask(
        self, team_id: str, channel_id: str | None, user_id: str, text: str, buttons: Sequence[Button]
    ) -> None:
        blocks = question_blocks(text, buttons)
        if channel_id is None:
            # A direct message from the bot: posting to a user id opens the conversation.
            await self._client.chat_postMessage(channel=user_id, text=text, blocks=blocks)
        else:
            await self._client.chat_postEphemeral(channel=channel_id, user=user_id, text=text, blocks=blocks)

    async def post_message(self, team_id: str, channel_id: str, text: str) -> str:
        response = await self._client.chat_postMessage(channel=channel_id, text=text)
        return str(response.get("ts") or "")

    async def post_as(
        self,
        team_id: str,
        channel_id: str,
        text: str,
        *,
        username: str,
        icon_url: str | None,
        metadata: dict[str, Any],
    ) -> str:
        """``chat.postMessage`` with ``username``/``icon_url`` (``chat:write.customize``) and
        message metadata; Slack's failures become the core's ``SlackError`` family. Posted with
        ``mrkdwn`` off: the text shows as written (see ``SlackClient.post_as``)."""
        try:
            response = await self._poster.chat_postMessage(
                channel=channel_id,
                text=text,
                mrkdwn=False,
                username=username,
                icon_url=icon_url or None,
                metadata=metadata,
                unfurl_links=False,
                unfurl_media=False,
            )
        except SlackApiError as exc:
            raise _slack_error(exc) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SlackTransient(f"Slack did not answer ({type(exc).__name__})") from exc
        ts = response.get("ts")
        if not isinstance(ts, str):
            raise SlackTransient("chat.postMessage answered without a ts")
        return ts

    async def update_message(self, team_id: str, channel_id: str, ts: str, text: str) -> None:
        try:
            await self._poster.chat_update(channel=channel_id, ts=ts, text=text)
        except SlackApiError as exc:
            raise _slack_error(exc) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SlackTransient(f"Slack did not answer ({type(exc).__name__})") from exc

    async def delete_message(self, team_id: str, channel_id: str, ts: str) -> bool:
        try:
            await self._poster.chat_delete(channel=channel_id, ts=ts)
        except SlackApiError as exc:
            if exc.response.get("error") == "message_not_found":
                return False
            raise _slack_error(exc) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SlackTransient(f"Slack did not answer ({type(exc).__name__})") from exc
        return True

    async def upload_file(
        self, team_id: str, channel_id: str, filename: str, data: bytes, *, title: str
    ) -> str:
        """Share a file into a channel: ``files.getUploadURLExternal``, the bytes, then
        ``files.completeUploadExternal``. Returns Slack's file id."""
        try:
            ticket = await self._client.files_getUploadURLExternal(filename=filename, length=len(data))
            upload_url, file_id = str(ticket["upload_url"]), str(ticket["file_id"])
            async with self._session.post(upload_url, data=data, timeout=DOWNLOAD_TIMEOUT) as response:
                if response.status != 200:
                    raise SlackTransient(f"Slack's upload URL answered HTTP {response.status}")
            await self._client.files_completeUploadExternal(
                files=[{"id": file_id, "title": title}], channel_id=channel_id
            )
        except SlackApiError as exc:
            raise _slack_error(exc) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SlackTransient(f"Slack did not answer ({type(exc).__name__})") from exc
        return file_id

    async def find_posted(self, team_id: str, channel_id: str, event_id: str, oldest: float) -> str | None:
        """Search ``conversations.history`` since ``oldest`` for our post carrying ``event_id``.

        Only the bridge's own bot's post counts: any app in the workspace can post a message
        carrying the same metadata, and taken for ours it would keep the X message from Slack."""
        cursor: str | None = None
        try:
            own = await self._own_bot_id()
            while True:
                response = await self._client.conversations_history(
                    channel=channel_id,
                    oldest=f"{max(0.0, oldest):.6f}",
                    include_all_metadata=True,
                    limit=200,
                    cursor=cursor,
                )
                for message in response.get("messages") or []:
                    metadata = message.get("metadata") or {}
                    payload = metadata.get("event_payload") or {}
                    ours = metadata.get("event_type") == METADATA_TYPE and message.get("bot_id") == own
                    if ours and payload.get("dm_event_id") == event_id:
                        return str(message.get("ts"))
                cursor = (response.get("response_metadata") or {}).get("next_cursor") or None
                if not cursor:
                    return None
        except SlackApiError as exc:
            raise _slack_error(exc) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SlackTransient(f"Slack did not answer ({type(exc).__name__})") from exc

    async def display_name(self, team_id: str, user_id: str) -> str:
        """The author's display name, else real name, else handle; cached (LRU) for an hour."""
        key = (team_id, user_id)
        cached = self._names.get(key)
        if cached is not None:
            return cached
        try:
            response = await self._client.users_info(user=user_id)
        except SlackApiError as exc:
            log.warning("users.info failed", extra={"user": user_id, "error": exc.response.get("error")})
            return user_id
        user = response.get("user") or {}
        profile = user.get("profile") or {}
        name = (
            profile.get("display_name")
            or profile.get("real_name")
            or user.get("real_name")
            or user.get("name")
            or user_id
        )
        self._names[key] = str(name)
        return str(name)

    async def member(self, team_id: str, user_id: str) -> SlackMember | None:
        """Asked afresh each time: a permission must not outlive an admin's demotion."""
        try:
            response = await self._client.users_info(user=user_id)
        except SlackApiError as exc:
            log.warning("users.info failed", extra={"user": user_id, "error": exc.response.get("error")})
            return None
        user = response.get("user") or {}
        return SlackMember(
            user_id=user_id, is_admin=user.get("is_admin") is True, is_owner=user.get("is_owner") is True
        )

    async def bot_in_channel(self, team_id: str, channel_id: str) -> bool | None:
        try:
            response = await self._client.conversations_info(channel=channel_id)
        except SlackApiError as exc:
            error = exc.response.get("error")
            if error == "channel_not_found":  # a private channel the bot is not in looks like this
                return False
            log.warning("conversations.info failed", extra={"channel": channel_id, "error": error})
            return None
        channel = response.get("channel") or {}
        # Slack leaves is_member out of DMs; the bot is always in a DM it can see.
        return channel.get("is_member") is True or channel.get("is_im") is True

    async def _own_bot_id(self) -> str:
        """The bot's id (``auth.test``), asked once; Slack's errors raised as any call's."""
        if self._bot_id is None:
            response = await self._client.auth_test()
            self._bot_id = str(response.get("bot_id") or "")
        return self._bot_id

    async def bot_name(self, team_id: str) -> str:
        if self._bot_name is None:
            try:
                response = await self._client.auth_test()
                self._bot_name = str(response.get("user") or "xdm")
            except SlackApiError:
                return "xdm"
        return self._bot_name

    async def respond(
        self,
        response_url: str,
        text: str,
        *,
        in_channel: bool = False,
        replace: bool = False,
        buttons: Sequence[Button] = (),
    ) -> None:
        webhook = AsyncWebhookClient(response_url, session=self._session)
        response = await webhook.send(
            text=text,
            blocks=question_blocks(text, buttons) if buttons else None,
            response_type="in_channel" if in_channel else "ephemeral",
            replace_original=replace,
        )
        if response.status_code >= 300:
            log.warning("response_url refused the reply", extra={"status": response.status_code})

    async def download_file(self, team_id: str, file: Mapping[str, Any], *, max_bytes: int) -> bytes:
        """The whole file in memory: for small files only (see :meth:`open_file`)."""
        async with self.open_file(team_id, file, max_bytes=max_bytes) as source:
            return await read_exactly(source, source.size)

    async def file_info(self, team_id: str, file_id: str) -> dict[str, Any]:
        """``files.info``'s file object, for an event that carried only a stub (``check_file_info``)."""
        try:
            response = await self._client.files_info(file=file_id)
        except SlackApiError as exc:
            error = str(exc.response.get("error"))
            raise FileUnavailable(
                f"{file_id}: Slack's files.info said {error}", retryable=error in SLACK_TRANSIENT
            ) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise FileUnavailable(f"{file_id}: Slack did not answer files.info", retryable=True) from exc
        info = response.get("file")
        if not isinstance(info, dict):
            raise FileUnavailable(f"{file_id}: Slack's files.info had no file in it")
        return dict(info)

    @contextlib.asynccontextmanager
    async def open_file(
        self, team_id: str, file: Mapping[str, Any], *, max_bytes: int
    ) -> AsyncIterator[MediaSource]:
        """A Slack file as a stream, from ``url_private_download`` with the bot token.

        Falls back to ``url_private``, then to ``files.info`` when the event carried no URL.
        A listed size or a ``Content-Length`` over ``max_bytes`` raises ``FileTooLarge``
        before the body is read. With neither (a chunked answer) the file is spooled to a
        temporary file on disk, never to memory, so X can be told its size first.
        Raises ``FileUnavailable`` (``retryable`` for no answer or a 5xx); an HTML answer
        means the bot token cannot read the file (``files:read`` missing, or no access).
        """
        name = file_name(file)
        listed = file.get("size")
        if isinstance(listed, int) and not isinstance(listed, bool) and listed > max_bytes:
            raise FileTooLarge(f"{name} is {human_size(listed)}; the limit for it is {human_size(max_bytes)}")
        url = await self._file_url(file)
        token = self._client.token
        if not token:
            raise FileUnavailable(f"{name}: the bridge has no Slack bot token to download it with")
        async with contextlib.AsyncExitStack() as stack:
            try:
                response = await self._get_from_slack(stack, name, file, url, token)
                self._check_download(name, file, response, max_bytes)
                source: MediaSource
                if response.content_length is not None:
                    source = _StreamSource(name, response.content, response.content_length)
                else:
                    spool = stack.enter_context(tempfile.TemporaryFile())  # noqa: SIM115 (closed by the stack)
                    source = await _spool(name, response.content, spool, max_bytes)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise FileUnavailable(
                    f"{name}: Slack did not deliver the file ({type(exc).__name__})", retryable=True
                ) from exc
            yield source

    async def _get_from_slack(
        self, stack: contextlib.AsyncExitStack, name: str, file: Mapping[str, Any], url: str, token: str
    ) -> aiohttp.ClientResponse:
        """GET ``url`` with the bot token, following redirects here rather than in aiohttp, so
        that every hop is checked before the token goes with it: it must never reach a host
        that is not Slack's."""
        for _ in range(MAX_REDIRECTS + 1):
            self._require_slack_host(name, file, url)
            response = await stack.enter_async_context(
                self._session.get(
                    url,
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=DOWNLOAD_TIMEOUT,
                    allow_redirects=False,
                )
            )
            if response.status in REDIRECTS and response.headers.get("Location"):
                url = urljoin(url, response.headers["Location"])
                response.release()
                continue
            return response
        raise FileUnavailable(f"{name}: Slack redirected the download more than {MAX_REDIRECTS} times")

    def slack_file_host(self, url: str) -> bool:
        """Whether ``url`` may be fetched with the bot token: https on Slack's own hosts
        (slack.com and its subdomains, such as files.slack.com), or SLACK_API_URL's origin
        (the sandbox and the tests point it at a simulator)."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return False
        host = (parts.hostname or "").lower()
        if parts.username is not None or parts.password is not None:
            return False
        if (
            parts.scheme == "https"
            and port in (None, 443)
            and _HOSTNAME.fullmatch(host)
            and (host == "slack.com" or host.endswith(".slack.com"))
        ):
            return True
        return (parts.scheme, parts.netloc.lower()) == self._api_origin

    def _require_slack_host(self, name: str, file: Mapping[str, Any], url: str) -> None:
        if self.slack_file_host(url):
            return
        log.warning(
            "file download refused: not one of Slack's file hosts",
            extra={"file_id": str(file.get("id", ""))[:40], "host": (urlsplit(url).hostname or "")[:100]},
        )
        raise FileUnavailable(
            f"{name} could not be fetched: its address is not on Slack's file servers, "
            "so the bridge did not download it"
        )

    async def _file_url(self, file: Mapping[str, Any]) -> str:
        url = file.get("url_private_download") or file.get("url_private")
        if not url and file.get("id"):
            # Events may carry only the file id (file_access: check_file_info).
            try:
                info = await self.file_info("", str(file["id"]))
            except FileUnavailable as exc:
                raise FileUnavailable(f"{file_name(file)}: {exc}", retryable=exc.retryable) from exc
            url = info.get("url_private_download") or info.get("url_private")
        if not url:
            raise FileUnavailable(f"{file_name(file)}: Slack gave no download link for it")
        return str(url)

    @staticmethod
    def _check_download(
        name: str, file: Mapping[str, Any], response: aiohttp.ClientResponse, max_bytes: int
    ) -> None:
        if response.status >= 500 or response.status == 429:
            raise FileUnavailable(f"{name}: Slack answered HTTP {response.status}", retryable=True)
        if response.status != 200:
            raise FileUnavailable(f"{name}: Slack answered HTTP {response.status} (deleted, or no access)")
        if response.content_type == "text/html" and file.get("mimetype") != "text/html":
            # Slack serves its sign-in page instead of the file when the token may not read it.
            raise FileUnavailable(
                f"{name}: Slack sent a web page instead of the file; the bot token lacks the "
                "files:read scope (reinstall the app) or cannot access this file"
            )
        if response.content_length is not None and response.content_length > max_bytes:
            size = human_size(response.content_length)
            raise FileTooLarge(f"{name} is {size}; the limit for it is {human_size(max_bytes)}")


# Slack's errors that are about the channel, not what was sent to it.
CHANNEL_REFUSALS = frozenset({"channel_not_found", "not_in_channel", "is_archived", "restricted_action"})
# Slack's errors that are about the message itself (chat.postMessage's documented errors): the
# same message is refused again however long one waits; another one to that channel may be taken.
MESSAGE_REFUSALS = frozenset(
    {
        "msg_too_long",
        "msg_blocks_too_long",
        "no_text",
        "invalid_arguments",
        "invalid_blocks",
        "invalid_blocks_format",
        "invalid_attachments",
        "too_many_attachments",
        "invalid_metadata_format",
        "invalid_metadata_schema",
        "metadata_too_large",
        "metadata_must_be_sent_from_app",
    }
)


def question_blocks(text: str, buttons: Sequence[Button]) -> list[dict[str, Any]]:
    """Block Kit for a question: the text, then its buttons in one actions block."""
    elements: list[dict[str, Any]] = []
    for button in buttons:
        element: dict[str, Any] = {
            "type": "button",
            "action_id": button.action_id,
            "text": {"type": "plain_text", "text": button.text},
            "value": button.value,
        }
        if button.style:
            element["style"] = button.style
        elements.append(element)
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {"type": "actions", "elements": elements},
    ]


def _slack_error(exc: SlackApiError) -> SlackRateLimited | SlackTransient | SlackRefused:
    """Slack's error, as the core's type: 429, retryable, or a refusal to act on."""
    status = exc.response.status_code
    error = str(exc.response.get("error") or f"HTTP {status}")
    if status == 429 or error == "ratelimited":
        raw = exc.response.headers.get("Retry-After") or exc.response.headers.get("retry-after") or "1"
        try:
            retry_after = float(raw[0] if isinstance(raw, list) else raw)
        except ValueError:
            retry_after = 1.0
        return SlackRateLimited(f"Slack rate limit ({error})", retry_after=retry_after)
    if status >= 500 or error in ("internal_error", "fatal_error", "service_unavailable", "request_timeout"):
        return SlackTransient(f"Slack failed: {error}")
    if error in CHANNEL_REFUSALS:
        return SlackChannelRefused(f"Slack refused the channel: {error}")
    if error in MESSAGE_REFUSALS:
        return SlackMessageRefused(f"Slack refused the message: {error}", error=error)
    return SlackRefused(f"Slack refused: {error}")


class _StreamSource:
    """The body of Slack's answer, read as X's upload asks for it (aiohttp buffers a little)."""

    def __init__(self, name: str, content: aiohttp.StreamReader, size: int) -> None:
        self._name = name
        self._content = content
        self._size = size
        self._left = size

    @property
    def size(self) -> int:
        return self._size

    async def read(self, n: int) -> bytes:
        if self._left <= 0:
            return b""
        try:
            piece = await self._content.read(min(n, self._left))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise FileUnavailable(
                f"{self._name}: Slack's download broke off ({type(exc).__name__})", retryable=True
            ) from exc
        if not piece:
            raise FileUnavailable(f"{self._name}: Slack's download ended early", retryable=True)
        self._left -= len(piece)
        return piece


class _FileSource:
    """A file spooled to disk."""

    def __init__(self, spool: IO[bytes], size: int) -> None:
        self._spool = spool
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    async def read(self, n: int) -> bytes:
        return self._spool.read(n)


async def _spool(name: str, content: aiohttp.StreamReader, spool: IO[bytes], max_bytes: int) -> MediaSource:
    size = 0
    async for chunk in content.iter_chunked(DOWNLOAD_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise FileTooLarge(f"{name} is over {human_size(max_bytes)}, the limit for it")
        spool.write(chunk)
    spool.seek(0)
    return _FileSource(spool, size)
