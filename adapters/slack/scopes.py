"""What the bridge asks of Slack: Web API methods, events and the scopes each needs.

``manifest.yml`` must request exactly the scopes below; a test reads the adapters'
source and fails when a Slack Web API call or an event listener appears that is
not listed here, so the manifest cannot silently fall behind the code.
``xdm-bridge doctor`` compares the installed token's scopes with ``BOT_SCOPES``.
"""

from __future__ import annotations

# Web API method (as Slack names it) → bot scopes it needs. ``auth.test`` needs none.
METHOD_SCOPES: dict[str, tuple[str, ...]] = {
    "auth.test": (),  # Bolt calls it on start-up; doctor calls it
    "oauth.v2.access": (),  # installs: the code (and, with token rotation, a refresh token) for a token
    # Also to a user id (the app's Messages tab); X replies are posted as their sender,
    # and username/icon_url need chat:write.customize.
    "chat.postMessage": ("chat:write", "chat:write.customize"),
    "chat.postEphemeral": ("chat:write",),
    # An edit or delete made on X Chat follows on the message the bridge posted for it.
    "chat.update": ("chat:write",),
    "chat.delete": ("chat:write",),
    # After a crash: was this X event already posted? (its metadata carries the dm_event_id)
    "conversations.history": ("channels:history", "groups:history"),
    # Media in X messages, shared into the bridged channel.
    "files.getUploadURLExternal": ("files:write",),
    "files.completeUploadExternal": ("files:write",),
    "reactions.add": ("reactions:write",),
    "reactions.remove": ("reactions:write",),
    "users.info": ("users:read",),  # display names; is_admin / is_owner for permissions
    # is the bot in the channel before it is bridged? (public: channels:read, private: groups:read)
    "conversations.info": ("channels:read", "groups:read"),
    "files.info": ("files:read",),  # and GET url_private_download with the bot token
    # App Home and the bridge modal: Slack's views.* methods need no scope.
    "views.publish": (),
    "views.open": (),
    "views.update": (),
}

# Event subscription (as the manifest names it) → bot scopes it needs.
EVENT_SCOPES: dict[str, tuple[str, ...]] = {
    "message.channels": ("channels:history",),
    "message.groups": ("groups:history",),
    "member_joined_channel": ("channels:read", "groups:read"),
    "member_left_channel": ("channels:read", "groups:read"),
    "app_uninstalled": (),
    "tokens_revoked": (),
    "app_home_opened": (),  # the Home tab is published when opened
}

COMMAND_SCOPES: tuple[str, ...] = ("commands",)


def bot_scopes() -> frozenset[str]:
    """Every scope the code needs: the manifest's ``oauth_config.scopes.bot``."""
    scopes: set[str] = set(COMMAND_SCOPES)
    for needed in (*METHOD_SCOPES.values(), *EVENT_SCOPES.values()):
        scopes.update(needed)
    return frozenset(scopes)


BOT_SCOPES = bot_scopes()


def slack_method(python_name: str) -> str:
    """``chat_postMessage`` → ``chat.postMessage`` (AsyncWebClient's naming)."""
    return python_name.replace("_", ".")
