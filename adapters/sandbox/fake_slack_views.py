"""Slack's own surfaces in the fake Slack: App Home, modals, and the payloads they send.

:class:`FakeViews` plays the Web API methods behind them (``views.publish``, ``views.open``,
``views.update``) for a :class:`~adapters.sandbox.fake_slack.FakeSlack`, which registers them.
Trigger ids work as at Slack: issued with a request that carries one (a slash command, a
click), usable once by ``views.open``, and only for :data:`TRIGGER_TTL_SECONDS`.

:class:`SurfaceSender` plays Slack calling the app from those surfaces: ``app_home_opened``,
``block_actions`` from a view, ``block_suggestion`` (an external select's options load) and
``view_submission``, each signed as Slack signs it, in the shapes Slack sends (Slack's
"Reference: interaction payloads" pages).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

if TYPE_CHECKING:
    from adapters.sandbox.fake_slack import FakeSlack, SlackResult, SlackSender

__all__ = ["TRIGGER_TTL_SECONDS", "FakeViews", "SurfaceSender", "ViewButton"]

#: Slack: "trigger_id … expires in 3 seconds".
TRIGGER_TTL_SECONDS = 3.0
MAX_MODAL_BLOCKS = 100
MAX_HOME_BLOCKS = 100
MAX_TITLE = 24


class ViewError(Exception):
    """A Web API refusal (``error``), raised to the fake's dispatcher."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


@dataclass(frozen=True)
class ViewButton:
    """A button on a published App Home or an open modal, as a person would see it."""

    user: str
    view_id: str
    action_id: str
    block_id: str
    text: str
    value: str


@dataclass
class _Trigger:
    issued_at: float
    user: str
    used: bool = False


class FakeViews:
    """``views.publish``/``open``/``update``, and what each person sees (:meth:`home`, :meth:`modal`)."""

    def __init__(self, clock: Callable[[], float], team_id: str) -> None:
        self._clock = clock
        self._team_id = team_id
        self._triggers: dict[str, _Trigger] = {}
        self._seq = 0
        #: The App Home each user sees (their latest published ``home`` view, with id and hash).
        self.homes: dict[str, dict[str, Any]] = {}
        #: Every modal opened, by view id (updates replace its content), with ``user``.
        self.modals: dict[str, dict[str, Any]] = {}

    def handlers(self) -> dict[str, Callable[[dict[str, Any], str], dict[str, Any]]]:
        return {
            "views.publish": self._publish,
            "views.open": self._open,
            "views.update": self._update,
        }

    # -- what tests and the sandbox look at ------------------------------------------

    def issue_trigger_id(self, user: str = "") -> str:
        """A fresh trigger id, as Slack puts in a slash command or an interaction payload."""
        trigger = f"{int(self._clock())}.{secrets.randbelow(10**12)}.{secrets.token_hex(16)}"
        self._triggers[trigger] = _Trigger(self._clock(), user)
        return trigger

    def home(self, user: str) -> dict[str, Any] | None:
        """The App Home ``user`` sees now (None: never published for them)."""
        return self.homes.get(user)

    def home_text(self, user: str) -> str:
        """Everything written on ``user``'s App Home, one block a line (buttons by their words)."""
        view = self.homes.get(user)
        return view_text(view) if view else ""

    def modal(self, user: str) -> dict[str, Any] | None:
        """The newest modal opened for ``user``."""
        mine = [v for v in self.modals.values() if v.get("user") == user]
        return mine[-1] if mine else None

    def buttons(self, view: Mapping[str, Any], user: str) -> list[ViewButton]:
        """The buttons of a view (App Home or modal)."""
        found = []
        for block in view.get("blocks") or []:
            candidates = list(block.get("elements") or []) if block.get("type") == "actions" else []
            if isinstance(block.get("accessory"), dict):
                candidates.append(block["accessory"])
            for element in candidates:
                if isinstance(element, dict) and element.get("type") == "button":
                    found.append(
                        ViewButton(
                            user=user,
                            view_id=str(view.get("id")),
                            action_id=str(element.get("action_id", "")),
                            block_id=str(block.get("block_id", "")),
                            text=str((element.get("text") or {}).get("text", "")),
                            value=str(element.get("value", "")),
                        )
                    )
        return found

    # -- the Web API ------------------------------------------------------------------

    def _publish(self, params: dict[str, Any], base: str) -> dict[str, Any]:
        user = params.get("user_id")
        if not isinstance(user, str) or not user:
            raise ViewError("invalid_arguments")
        view = self._view(params, "home", MAX_HOME_BLOCKS)
        previous = self.homes.get(user)
        if params.get("hash") and previous is not None and params["hash"] != previous["hash"]:
            raise ViewError("hash_conflict")
        stored = self._stored(view, previous["id"] if previous else None)
        stored["user"] = user
        self.homes[user] = stored
        return {"ok": True, "view": stored}

    def _open(self, params: dict[str, Any], base: str) -> dict[str, Any]:
        trigger_id = params.get("trigger_id")
        found = self._triggers.get(trigger_id) if isinstance(trigger_id, str) else None
        if found is None:
            raise ViewError("invalid_trigger_id")
        if found.used:
            raise ViewError("exchanged_trigger_id")
        if self._clock() - found.issued_at > TRIGGER_TTL_SECONDS:
            raise ViewError("expired_trigger_id")
        view = self._view(params, "modal", MAX_MODAL_BLOCKS)
        found.used = True
        stored = self._stored(view, None)
        stored["user"] = found.user
        self.modals[stored["id"]] = stored
        return {"ok": True, "view": stored}

    def _update(self, params: dict[str, Any], base: str) -> dict[str, Any]:
        view_id = params.get("view_id")
        current = self.modals.get(view_id) if isinstance(view_id, str) else None
        if current is None:
            raise ViewError("not_found")
        if params.get("hash") and params["hash"] != current["hash"]:
            raise ViewError("hash_conflict")
        view = self._view(params, "modal", MAX_MODAL_BLOCKS)
        stored = self._stored(view, current["id"])
        stored["user"] = current["user"]
        self.modals[stored["id"]] = stored
        return {"ok": True, "view": stored}

    def replace_modal(self, view_id: str, view: Mapping[str, Any]) -> None:
        """A ``response_action: update`` the app answered a submission with."""
        current = self.modals.get(view_id)
        if current is not None:
            stored = self._stored(dict(view), view_id)
            stored["user"] = current["user"]
            self.modals[view_id] = stored

    def _view(self, params: Mapping[str, Any], kind: str, max_blocks: int) -> dict[str, Any]:
        raw = params.get("view")
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except ValueError:
                raise ViewError("invalid_arguments") from None
        if not isinstance(raw, dict) or raw.get("type") != kind:
            raise ViewError("invalid_arguments")
        blocks = raw.get("blocks")
        if not isinstance(blocks, list) or len(blocks) > max_blocks:
            raise ViewError("invalid_arguments")
        if kind == "modal":
            title = raw.get("title")
            if not isinstance(title, dict) or not 0 < len(str(title.get("text", ""))) <= MAX_TITLE:
                raise ViewError("invalid_arguments")
        return raw

    def _stored(self, view: dict[str, Any], view_id: str | None) -> dict[str, Any]:
        self._seq += 1
        return {
            **view,
            "id": view_id or f"V{self._seq:08d}",
            "team_id": self._team_id,
            "hash": f"{int(self._clock())}.{secrets.token_hex(4)}",
            "private_metadata": view.get("private_metadata", ""),
            "callback_id": view.get("callback_id", ""),
            "state": {"values": {}},
        }


def view_text(view: Mapping[str, Any]) -> str:
    """A view's words, one block a line: section texts and fields, headers, contexts, buttons."""
    lines: list[str] = []
    for block in view.get("blocks") or []:
        parts: list[str] = []
        for key in ("text", "label"):
            if isinstance(block.get(key), dict):
                parts.append(str(block[key].get("text", "")))
        for field in block.get("fields") or []:
            parts.append(str(field.get("text", "")))
        for element in block.get("elements") or []:
            if isinstance(element, dict) and isinstance(element.get("text"), dict | str):
                text = element["text"]
                parts.append(str(text.get("text", "")) if isinstance(text, dict) else text)
        accessory = block.get("accessory")
        if isinstance(accessory, dict) and isinstance(accessory.get("text"), dict):
            parts.append(str(accessory["text"].get("text", "")))
        if parts:
            lines.append(" ".join(parts))
    return "\n".join(lines)


def pressed(action_id: str, block_id: str, text: str, value: str, at: float) -> dict[str, Any]:
    """A button as a ``block_actions`` payload names the one pressed (a message's or a view's)."""
    return {
        "action_id": action_id,
        "block_id": block_id,
        "text": {"type": "plain_text", "text": text, "emoji": True},
        "value": value,
        "type": "button",
        "action_ts": f"{at:.6f}",
    }


class SurfaceSender:
    """Signed interaction payloads from App Home and modals, as Slack posts them."""

    def __init__(self, sender: SlackSender, fake: FakeSlack) -> None:
        self.sender = sender
        self.fake = fake

    def _user(self, user_id: str) -> dict[str, Any]:
        return {
            "id": user_id,
            "username": user_id.lower(),
            "name": user_id.lower(),
            "team_id": self.sender.team_id,
        }

    async def _form(self, payload: Mapping[str, Any], **kw: Any) -> SlackResult:
        body = urlencode({"payload": json.dumps(payload)}).encode()
        return await self.sender.raw(body, "application/x-www-form-urlencoded", **kw)

    async def home_opened(self, user_id: str, **kw: Any) -> SlackResult:
        """``app_home_opened`` (the Home tab), as the Events API delivers it."""
        event: dict[str, Any] = {
            "type": "app_home_opened",
            "user": user_id,
            "channel": f"D{user_id[1:]}",
            "tab": "home",
            "event_ts": f"{self.sender.clock():.6f}",
        }
        home = self.fake.views.home(user_id)
        if home is not None:
            event["view"] = home
        return await self.sender.event(event, **kw)

    def view_action_payload(self, button: ViewButton, *, user_id: str) -> dict[str, Any]:
        view = self.fake.views.homes.get(button.user) or self.fake.views.modals.get(button.view_id) or {}
        container_type = "view"
        return {
            "type": "block_actions",
            "user": self._user(user_id),
            "api_app_id": self.sender.api_app_id,
            "token": self.sender.verification_token,
            "container": {"type": container_type, "view_id": button.view_id},
            "trigger_id": self.fake.views.issue_trigger_id(user_id),
            "team": {"id": self.sender.team_id, "domain": "fake"},
            "enterprise": None,
            "is_enterprise_install": False,
            "view": view,
            "actions": [
                pressed(button.action_id, button.block_id, button.text, button.value, self.sender.clock())
            ],
        }

    async def click(self, button: ViewButton, *, user_id: str | None = None, **kw: Any) -> SlackResult:
        """``user_id`` (default: whom the view is for) clicks a button of an App Home or a modal."""
        payload = self.view_action_payload(button, user_id=user_id or button.user)
        return await self._form(payload, **kw)

    async def suggest(
        self, view: Mapping[str, Any], *, action_id: str, block_id: str, value: str, user_id: str, **kw: Any
    ) -> SlackResult:
        """An external select's options load (``block_suggestion``) for what ``user_id`` typed."""
        payload = {
            "type": "block_suggestion",
            "user": self._user(user_id),
            "container": {"type": "view", "view_id": view.get("id")},
            "api_app_id": self.sender.api_app_id,
            "token": self.sender.verification_token,
            "action_id": action_id,
            "block_id": block_id,
            "value": value,
            "team": {"id": self.sender.team_id, "domain": "fake"},
            "enterprise": None,
            "is_enterprise_install": False,
            "view": dict(view),
        }
        return await self._form(payload, **kw)

    def _response_urls(
        self, view: Mapping[str, Any], values: Mapping[str, Mapping[str, Any]]
    ) -> list[dict[str, str]]:
        """Slack's ``response_urls``: one for each channel picked in a select that asks for it
        (``response_url_enabled``), where the app may then answer in that channel."""
        found = []
        for block in view.get("blocks") or []:
            element = block.get("element") if isinstance(block, dict) else None
            if not (isinstance(element, dict) and element.get("response_url_enabled")):
                continue
            state = values.get(str(block.get("block_id")), {}).get(str(element.get("action_id")), {})
            channel = state.get("selected_conversation") or state.get("selected_channel")
            if isinstance(channel, str) and channel:
                found.append(
                    {
                        "block_id": str(block.get("block_id")),
                        "action_id": str(element.get("action_id")),
                        "channel_id": channel,
                        "response_url": self.fake.new_response_url(),
                    }
                )
        return found

    async def submit(
        self, view: Mapping[str, Any], values: Mapping[str, Mapping[str, Any]], *, user_id: str, **kw: Any
    ) -> SlackResult:
        """``user_id`` submits a modal with ``values`` (block_id → action_id → state, Slack's shape).

        A ``response_action: update`` answer replaces the modal the fake keeps, as Slack would."""
        payload = {
            "type": "view_submission",
            "team": {"id": self.sender.team_id, "domain": "fake"},
            "user": self._user(user_id),
            "api_app_id": self.sender.api_app_id,
            "token": self.sender.verification_token,
            "trigger_id": self.fake.views.issue_trigger_id(user_id),
            "view": {**view, "state": {"values": {k: dict(v) for k, v in values.items()}}},
            "response_urls": self._response_urls(view, values),
            "is_enterprise_install": False,
            "enterprise": None,
        }
        result = await self._form(payload, **kw)
        if result.status == 200 and result.text.strip().startswith("{"):
            answer = result.json()
            if answer.get("response_action") == "update" and isinstance(answer.get("view"), dict):
                self.fake.views.replace_modal(str(view.get("id")), answer["view"])
        return result
