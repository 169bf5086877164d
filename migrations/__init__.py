"""Schema migrations: numbered, append-only. Never edit one that has shipped; add the next.

Applied at start-up by ``xdm-bridge serve`` and alone by ``xdm-bridge migrate``
(sqlite-utils' built-in ``Migrations``: each runs in a transaction together with
its row in ``_sqlite_migrations``).
"""

from __future__ import annotations

from sqlite_utils import Database, Migrations

migrations = Migrations("xdm_bridge")

PENDING_STATES = "('queued', 'sending', 'waiting')"


@migrations(name="0001_initial")
def m0001_initial(db: Database) -> None:
    db.table("accounts").create(
        {
            "id": int,
            "team_id": str,
            "slack_user_id": str,
            "x_user_id": str,
            "x_username": str,
            "access_token": str,  # Fernet ciphertext
            "refresh_token": str,  # Fernet ciphertext, may be NULL
            "expires_at": float,
            "scope": str,
            "needs_reconnect": int,
            "created_at": float,
            "updated_at": float,
        },
        pk="id",
        not_null={"team_id", "slack_user_id", "x_user_id", "x_username", "access_token"},
        defaults={"needs_reconnect": 0, "scope": ""},
    )
    db.table("accounts").create_index(["team_id", "slack_user_id"], unique=True)

    db.table("oauth_states").create(
        {
            "state": str,
            "code_verifier": str,  # Fernet ciphertext
            "team_id": str,
            "slack_user_id": str,
            "channel_id": str,
            "response_url": str,
            "expires_at": float,
            "used": int,
        },
        pk="state",
        not_null={"code_verifier", "team_id", "slack_user_id", "expires_at"},
        defaults={"used": 0},
    )

    db.table("mappings").create(
        {
            "team_id": str,
            "channel_id": str,
            "kind": str,
            "account_id": int,
            "conversation_id": str,
            "participant_id": str,
            "created_by": str,
            "created_at": float,
        },
        pk=("team_id", "channel_id"),
        not_null={"kind", "account_id"},
        foreign_keys=[("account_id", "accounts", "id")],
    )

    db.table("outbox").create(
        {
            "id": int,
            "seq": int,
            "part": int,
            "parts_total": int,
            "team_id": str,
            "channel_id": str,
            "slack_ts": str,
            "author_id": str,
            "account_id": int,
            "target_participant": str,
            "target_conversation": str,
            "text": str,
            "source": str,  # JSON: what rendering needs
            "state": str,
            "attempts": int,
            "next_attempt_at": float,
            "last_error": str,
            "dm_event_id": str,
            "created_at": float,
            "sending_since": float,
            "held_since": float,
            "hourglass": int,
            "sent_at": float,
        },
        pk="id",
        not_null={"seq", "part", "team_id", "channel_id", "slack_ts", "account_id", "state"},
        defaults={"attempts": 0, "hourglass": 0, "parts_total": 1, "next_attempt_at": 0.0},
        foreign_keys=[("account_id", "accounts", "id")],
    )
    db.table("outbox").create_index(["team_id", "channel_id", "slack_ts", "part"], unique=True)
    db.execute(
        "CREATE INDEX outbox_pending ON outbox (team_id, channel_id, seq, part) "
        f"WHERE state IN {PENDING_STATES}"
    )
    db.execute("CREATE INDEX outbox_account_state ON outbox (account_id, state)")

    db.table("message_map").create(
        {
            "team_id": str,
            "channel_id": str,
            "slack_ts": str,
            "part": int,
            "conversation_id": str,
            "dm_event_id": str,
            "created_at": float,
        },
        pk=("team_id", "channel_id", "slack_ts", "part"),
        not_null={"dm_event_id"},
    )
    db.table("message_map").create_index(["dm_event_id"], unique=True)

    db.table("budgets").create(
        {"key": str, "limit_": int, "remaining": int, "reset_at": float},
        pk="key",
    )

    db.table("seen_events").create({"event_id": str, "seen_at": float}, pk="event_id")
    db.table("seen_events").create_index(["seen_at"])


@migrations(name="0002_outbox_kinds_and_media")
def m0002_outbox_kinds_and_media(db: Database) -> None:
    """Edits, deletes and files (issue 4).

    ``kind`` is message | edit | delete; ``ref_ts`` is the Slack message an edit or a
    delete is about (reactions and the message map use it); ``media`` is the Slack
    file a part carries (JSON) and ``media_id`` X's id for it once uploaded, so a
    retry does not upload twice.
    """
    outbox = db.table("outbox")
    outbox.add_column("kind", str, not_null_default="message")
    outbox.add_column("ref_ts", str)
    outbox.add_column("media", str)
    outbox.add_column("media_id", str)
    db.execute("UPDATE outbox SET ref_ts = slack_ts WHERE ref_ts IS NULL")


@migrations(name="0003_pending_channels")
def m0003_pending_channels(db: Database) -> None:
    """Channels with unfinished outbox rows, kept exact by triggers.

    The worker looks for each channel's oldest unfinished row after every send.
    Scanning all pending rows made that O(backlog), so a backlog slowed delivery,
    which grew the backlog; with this table it is one index lookup per channel.
    Triggers (not application code) keep it right, so the CLI's retry and drop
    keep it right too.
    """
    db.execute(
        "CREATE TABLE pending_channels (team_id TEXT NOT NULL, channel_id TEXT NOT NULL, "
        "PRIMARY KEY (team_id, channel_id)) WITHOUT ROWID"
    )
    db.execute(
        f"""
        CREATE TRIGGER outbox_pending_insert AFTER INSERT ON outbox
        WHEN NEW.state IN {PENDING_STATES}
        BEGIN
            INSERT OR IGNORE INTO pending_channels (team_id, channel_id) VALUES (NEW.team_id, NEW.channel_id);
        END
        """
    )
    db.execute(
        f"""
        CREATE TRIGGER outbox_pending_reopen AFTER UPDATE OF state ON outbox
        WHEN NEW.state IN {PENDING_STATES}
        BEGIN
            INSERT OR IGNORE INTO pending_channels (team_id, channel_id) VALUES (NEW.team_id, NEW.channel_id);
        END
        """
    )
    db.execute(
        f"""
        CREATE TRIGGER outbox_pending_finish AFTER UPDATE OF state ON outbox
        WHEN NEW.state NOT IN {PENDING_STATES} AND NOT EXISTS (
            SELECT 1 FROM outbox INDEXED BY outbox_pending
            WHERE team_id = NEW.team_id AND channel_id = NEW.channel_id AND state IN {PENDING_STATES}
        )
        BEGIN
            DELETE FROM pending_channels WHERE team_id = NEW.team_id AND channel_id = NEW.channel_id;
        END
        """
    )
    db.execute(
        f"""
        CREATE TRIGGER outbox_pending_delete AFTER DELETE ON outbox
        WHEN NOT EXISTS (
            SELECT 1 FROM outbox INDEXED BY outbox_pending
            WHERE team_id = OLD.team_id AND channel_id = OLD.channel_id AND state IN {PENDING_STATES}
        )
        BEGIN
            DELETE FROM pending_channels WHERE team_id = OLD.team_id AND channel_id = OLD.channel_id;
        END
        """
    )
    db.execute(
        "INSERT OR IGNORE INTO pending_channels (team_id, channel_id) "
        f"SELECT DISTINCT team_id, channel_id FROM outbox WHERE state IN {PENDING_STATES}"
    )


@migrations(name="0004_outbox_deleted_and_one_target")
def m0004_outbox_deleted_and_one_target(db: Database) -> None:
    """Deletes that catch a send in flight, and rows that name exactly one target (issue 11).

    ``deleted_at``: when Slack deleted the message while its row was ``sending`` (X may or may
    not have it). Such a row may be read back (and its DM deleted on X if it landed) but never
    sent again.

    A sent 1-to-1 row used to get the conversation id written beside its participant, and the
    edit and delete rows copied from it then named two targets, which no code can read: the
    participant is kept (it is how the row was addressed) and the copy is dropped.
    """
    db.table("outbox").add_column("deleted_at", float)
    db.execute(
        "UPDATE outbox SET target_conversation = NULL "
        "WHERE target_participant IS NOT NULL AND target_conversation IS NOT NULL"
    )


@migrations(name="0005_media_lifetime_and_attempts")
def m0005_media_lifetime_and_attempts(db: Database) -> None:
    """X's media ids expire, and an upload must never crash the process twice (issue 11).

    ``media_uploaded_at`` is when ``media_id`` was obtained, so an id older than X's 24 h
    lifetime is uploaded again instead of being refused. ``media_unfinished`` counts uploads
    begun and never finished (set before the download starts, cleared when the upload ends
    either way): one that keeps climbing means the upload takes the process down, and the
    file is then given up while the message's text still goes.
    """
    outbox = db.table("outbox")
    outbox.add_column("media_uploaded_at", float)
    outbox.add_column("media_unfinished", int, not_null_default=0)


@migrations(name="0006_retention_and_group_creation")
def m0006_retention_and_group_creation(db: Database) -> None:
    """Issue 11: retention indexes, and groups created through the outbox.

    Finished rows and message maps are pruned by age in small batches; without the indexes
    each batch would scan the whole history. ``/xdm new-group`` maps the channel at once and
    its opening message creates the group from the outbox: until X answers, the mapping keeps
    the participants (``participant_ids``, JSON) and the rows their copy (``target_group``).
    """
    db.execute("CREATE INDEX IF NOT EXISTS outbox_created_at ON outbox (created_at)")
    db.execute("CREATE INDEX IF NOT EXISTS message_map_created_at ON message_map (created_at)")
    db.table("mappings").add_column("participant_ids", str)
    db.table("outbox").add_column("target_group", str)


@migrations(name="0007_disconnect_and_connect_page")
def m0007_disconnect_and_connect_page(db: Database) -> None:
    """Disconnecting an account, pausing its mappings, and a connect flow bound to one browser (issue 12).

    ``accounts.disconnected_at``: the owner (or an operator) disconnected it; its tokens are
    gone (``access_token`` is then empty, ``refresh_token`` NULL) and it needs reconnecting.
    ``mappings.paused_at`` / ``paused_by``: the mapping's account was disconnected; messages
    wait until the same person connects again. ``oauth_states.browser_hash``: SHA-256 of
    the cookie set when the person confirmed on the bridge's page, so only that browser
    can finish the flow; ``slack_user_name`` and ``team_name`` are what that page shows.
    """
    db.table("accounts").add_column("disconnected_at", float)
    db.table("mappings").add_column("paused_at", float)
    db.table("mappings").add_column("paused_by", str)
    oauth_states = db.table("oauth_states")
    oauth_states.add_column("browser_hash", str)
    oauth_states.add_column("slack_user_name", str)
    oauth_states.add_column("team_name", str)


@migrations(name="0008_inbound")
def m0008_inbound(db: Database) -> None:
    """X → Slack (issue 13).

    ``inbound``: one row per X event to post into Slack, unique by ``dm_event_id`` so an
    event read by push and by poll (or twice by either) is handled once. ``seq`` is the
    snowflake as an integer: X's order within a channel. ``state`` is queued | posting
    (committed before ``chat.postMessage``; after a crash Slack's history is searched for
    the message's metadata before posting again) | posted | skipped (ours, an echo, or a
    conversation no channel bridges).
    ``cursors``: per account, the newest X event already taken from ``GET /2/dm_events``,
    so a restart neither reposts nor skips.
    """
    db.table("inbound").create(
        {
            "id": int,
            "dm_event_id": str,
            "seq": int,
            "account_id": int,
            "conversation_id": str,
            "team_id": str,
            "channel_id": str,
            "event_type": str,
            "sender_id": str,
            "payload": str,  # JSON: text, sender's name/handle/avatar, media, participants
            "origin": str,  # poll | push | backfill | sent (a DM the bridge itself sent)
            "state": str,
            "attempts": int,
            "next_attempt_at": float,
            "posting_since": float,
            "slack_ts": str,
            "last_error": str,
            "created_at": float,
            "posted_at": float,
        },
        pk="id",
        not_null={"dm_event_id", "seq", "state", "origin"},
        defaults={"attempts": 0, "next_attempt_at": 0.0},
    )
    db.table("inbound").create_index(["dm_event_id"], unique=True)
    db.execute(
        "CREATE INDEX inbound_pending ON inbound (team_id, channel_id, seq) "
        "WHERE state IN ('queued', 'posting')"
    )
    db.table("cursors").create(
        {"account_id": int, "newest_event_id": str, "updated_at": float},
        pk="account_id",
        foreign_keys=[("account_id", "accounts", "id")],
    )


@migrations(name="0009_mapping_participant_username")
def m0009_mapping_participant_username(db: Database) -> None:
    """The X handle of a 1-to-1 mapping's other person, as known when it was mapped (issue 10).

    `/xdm status` names people by handle; X's ids are all a 1-to-1 mapping kept. Null for
    mappings made before, or from a numeric id: they are shown by id, as before.
    """
    db.table("mappings").add_column("participant_username", str)


@migrations(name="0012_held_for_previous_account")
def m0012_held_for_previous_account(db: Database) -> None:
    """Mappings and messages held for the X account they were made with.

    When a Slack user connects a different X account, a mapping bound to a conversation
    id (and every unsent message for such a conversation) belonged to the old account:
    sending it as the new one would put a stranger into that conversation. Such mappings
    stay paused with ``held_for`` (the old X user id; ``held_for_username`` for people to
    read), and their unsent rows go to state ``held`` (not pending, so a channel mapped
    again is not stuck behind them) with ``held_for`` and the state they had
    (``held_state``). Connecting the old account again releases both.
    """
    mappings = db.table("mappings")
    mappings.add_column("held_for", str)
    mappings.add_column("held_for_username", str)
    outbox = db.table("outbox")
    outbox.add_column("held_for", str)
    outbox.add_column("held_state", str)


@migrations(name="0013_inbound_per_channel_backfills_schedule")
def m0013_inbound_per_channel_backfills_schedule(db: Database) -> None:
    """X → Slack, per channel and across restarts.

    ``inbound`` is unique by (``dm_event_id``, channel), not by event: two channels bridged
    to one X conversation each get each event once (a row of a conversation no channel
    bridges has no channel; COALESCE makes it one row too).
    ``backfills``: a channel's history wanted (`/xdm link` or `/xdm dm` of a conversation
    with history), kept until the history is queued, so a crash does not lose the request;
    ``bridged_at`` splits history (before) from what the poller takes (after).
    ``read_schedule``: when the leader reads an account's DMs next and whether X pushes to it,
    so `/xdm status` on any instance can say it.
    ``parked_cursors``: the read cursor of an X account its Slack user switched away from,
    put back when that account is connected again (so nothing it got meanwhile is skipped
    because the other account's events have higher ids).
    """
    db.execute("DROP INDEX IF EXISTS idx_inbound_dm_event_id")
    db.execute(
        "CREATE UNIQUE INDEX inbound_event_channel ON inbound "
        "(dm_event_id, COALESCE(team_id, ''), COALESCE(channel_id, ''))"
    )
    db.table("backfills").create(
        {"account_id": int, "conversation_id": str, "bridged_at": float, "requested_at": float},
        pk=("account_id", "conversation_id"),
        not_null={"bridged_at"},
    )
    db.table("read_schedule").create(
        {"account_id": int, "next_read_at": float, "pushed": int, "updated_at": float},
        pk="account_id",
    )
    db.table("parked_cursors").create(
        {"account_id": int, "x_user_id": str, "newest_event_id": str, "updated_at": float},
        pk=("account_id", "x_user_id"),
    )


@migrations(name="0016_message_map_per_channel_and_read_gaps")
def m0016_message_map_per_channel_and_read_gaps(db: Database) -> None:
    """The message map per channel, and a read left unfinished kept across polls (issue 13).

    ``message_map`` was unique by ``dm_event_id``: an X event posted into a second channel
    bridged to the same conversation got no map row there, so a thread reply to that post
    could not find what it answers. It is unique by (``dm_event_id``, channel) now.

    ``cursors.gap_*``: one poll reads at most so many pages; when X has more new events than
    that, the cursor stays where it was (``newest_event_id``, the floor) and the read goes on
    from ``gap_token`` (X's pagination token) on the next polls, until it reaches the floor;
    only then does the cursor move to ``gap_newest`` (the newest event that read saw).
    ``gap_oldest`` is the oldest event read so far, ``gap_restarts`` how often X refused the
    token (the read then starts again from the newest), ``gap_opened_at`` when it began.
    ``parked_cursors.gap_newest``/``gap_oldest``: an unfinished read of an X account its Slack
    user switched away from; when it is back, the read starts again from the newest (the token
    is long gone) and its channels wait until it reaches the cursor.
    """
    db.execute("DROP INDEX IF EXISTS idx_message_map_dm_event_id")
    db.execute(
        "CREATE UNIQUE INDEX message_map_event_channel ON message_map (dm_event_id, team_id, channel_id)"
    )
    cursors = db.table("cursors")
    cursors.add_column("gap_token", str)
    cursors.add_column("gap_newest", str)
    cursors.add_column("gap_oldest", str)
    cursors.add_column("gap_restarts", int, not_null_default=0)
    cursors.add_column("gap_opened_at", float)
    parked = db.table("parked_cursors")
    parked.add_column("gap_newest", str)
    parked.add_column("gap_oldest", str)


@migrations(name="0017_inbound_retention")
def m0017_inbound_retention(db: Database) -> None:
    """Finished inbound rows are pruned by age, and status reads indexes (issue 13).

    Every X event the bridge took stayed for ever (its row is what makes a second read of the
    same event a no-op), so the table grew with every DM read, and ``/xdm status`` counted an
    account's whole history (0.6 s at a million rows, on the store's only thread). X serves DM
    events for 30 days, so a finished row older than that, and than ``RETENTION_DAYS``, can go.
    """
    db.execute(
        "CREATE INDEX inbound_finished_created_at ON inbound (created_at) "
        "WHERE state IN ('posted', 'skipped', 'failed')"
    )
    db.execute("CREATE INDEX inbound_account_state ON inbound (account_id, state)")
    db.execute("CREATE INDEX inbound_account_created_at ON inbound (account_id, created_at)")
    db.execute("CREATE INDEX inbound_failed ON inbound (team_id, channel_id, id) WHERE state = 'failed'")


@migrations(name="0018_pending_connections")
def m0018_pending_connections(db: Database) -> None:
    """An X authorization waits for its Slack user's confirmation before it is bound (issue 17).

    Whoever opens a `/xdm connect` link picks the X account, so a forwarded link could bind
    someone else's account to the Slack user who asked. X's callback now keeps the tokens
    here (Fernet ciphertext, like ``accounts``) for a few minutes, and the Slack user who ran
    the command binds them with a click in Slack; Cancel or expiry deletes the row (and the
    tokens are revoked at X). ``id`` is random and is what the Slack buttons carry.
    """
    db.table("pending_connections").create(
        {
            "id": str,
            "team_id": str,
            "slack_user_id": str,
            "channel_id": str,
            "response_url": str,
            "x_user_id": str,
            "x_username": str,
            "access_token": str,  # Fernet ciphertext
            "refresh_token": str,  # Fernet ciphertext, may be NULL
            "token_expires_at": float,
            "scope": str,
            "expires_at": float,
        },
        pk="id",
        not_null={"team_id", "slack_user_id", "x_user_id", "x_username", "access_token", "expires_at"},
    )
    db.table("pending_connections").create_index(["expires_at"])


@migrations(name="0019_xchat_identities")
def m0019_xchat_identities(db: Database) -> None:
    """X Chat identities (issue 19): the X Chat keys of an account the operator controls, made by
    ``xdm-bridge xchat setup`` (or imported), kept encrypted like the tokens. One per X user,
    whichever Slack users connected it. ``state`` is ``saved`` (kept, not yet registered with X:
    saved first, so a crash before X answers leaves keys the bridge can still register),
    ``registered`` (X holds the public half under ``version``) or ``mismatch`` (X's registered key
    is no longer this one: nothing is encrypted with it).
    """
    for statement in XCHAT_IDENTITIES.split(";"):
        if statement.strip():
            db.execute(statement)


# The same statements on both engines (portable types only). ``xchat_peers``: whether an X user
# had X Chat keys registered when last asked (at most once a day each): a bridged conversation
# with such a person may not bring their replies back, and the channel is told so.
XCHAT_IDENTITIES = """
CREATE TABLE xchat_peers (
    x_user_id TEXT PRIMARY KEY,
    on_chat INTEGER NOT NULL,
    checked_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE xchat_identities (
    x_user_id TEXT PRIMARY KEY,
    private_keys TEXT NOT NULL,      -- Fernet ciphertext of chat_xdk's exported keys
    registration TEXT NOT NULL,      -- JSON: the public half, as POST /2/users/{id}/public_keys takes it
    public_key TEXT NOT NULL,        -- the identity public key (base64), to match X's records
    fingerprint TEXT NOT NULL,       -- chat_xdk's fingerprint of it, shown to the operator
    version TEXT,                    -- X's public_key_version, once registered
    state TEXT NOT NULL,
    detail TEXT,                     -- why it is in 'mismatch'
    created_at DOUBLE PRECISION NOT NULL,
    registered_at DOUBLE PRECISION
)
"""


@migrations(name="0020_consents")
def m0020_consents(db: Database) -> None:
    """Consents (issue 21): X's Developer Policy asks for explicit consent before DMs are stored.
    Each confirmed connection keeps who agreed (Slack team and user, X account), to which words,
    and when. Append-only: a consent is a record of the past."""
    db.execute(CONSENTS)


CONSENTS = """
CREATE TABLE consents (
    id INTEGER PRIMARY KEY,
    team_id TEXT NOT NULL,
    slack_user_id TEXT NOT NULL,
    x_user_id TEXT NOT NULL,
    x_username TEXT NOT NULL,
    text TEXT NOT NULL,
    given_at DOUBLE PRECISION NOT NULL
)
"""


@migrations(name="0024_mapping_encrypted")
def m0024_mapping_encrypted(db: Database) -> None:
    """X Chat (issue 19): a mapping bridges either a legacy DM conversation or an encrypted X Chat
    conversation; the ids look alike (``A-B``, ``g…``), so the kind of conversation is a column."""
    db.table("mappings").add_column("encrypted", int, not_null_default=0)


@migrations(name="0025_outbox_chat")
def m0025_outbox_chat(db: Database) -> None:
    """X Chat, Slack to X (issue 19): a row of an encrypted conversation is sent only through X
    Chat, never in the clear, so it says so itself (``encrypted``), whatever later happens to its
    channel's mapping; and ``chat`` keeps the message as encrypted and signed before its first
    attempt (JSON: message id and body), so every retry posts the same signed message.

    A trigger sets ``encrypted`` on every insert, from the message's earlier rows (its parts, the
    original of an edit or delete) or else the channel's mapping: every path that writes a row
    (accept, render, corrections, PostgreSQL's accept function) gets it without a change."""
    db.table("outbox").add_column("encrypted", int, not_null_default=0)
    db.table("outbox").add_column("chat", str)
    db.execute(OUTBOX_ENCRYPTED_TRIGGER)


OUTBOX_ENCRYPTED_TRIGGER = """
CREATE TRIGGER outbox_encrypted AFTER INSERT ON outbox WHEN NEW.encrypted = 0
BEGIN
    UPDATE outbox SET encrypted = COALESCE(
        (SELECT o.encrypted FROM outbox AS o WHERE o.team_id = NEW.team_id
         AND o.channel_id = NEW.channel_id AND o.slack_ts = NEW.ref_ts AND o.part = 0
         AND o.id <> NEW.id),
        (SELECT m.encrypted FROM mappings AS m WHERE m.team_id = NEW.team_id
         AND m.channel_id = NEW.channel_id AND m.account_id = NEW.account_id),
        0)
    WHERE id = NEW.id;
END
"""


@migrations(name="0026_xchat_inbound")
def m0026_xchat_inbound(db: Database) -> None:
    """X Chat, X → Slack (issue 19): how far each encrypted conversation has been read, per
    account (the legacy cursor is one per account: ``GET /2/dm_events`` covers every DM; X Chat
    is read one conversation at a time)."""
    db.execute(XCHAT_CURSORS)


# The same statement on both engines. ``newest_sequence_id``: the newest X Chat sequence id taken
# from a read ("0": read, nothing there yet); the events themselves are inbound rows.
XCHAT_CURSORS = """
CREATE TABLE xchat_cursors (
    account_id BIGINT NOT NULL,
    conversation_id TEXT NOT NULL,
    newest_sequence_id TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (account_id, conversation_id)
)
"""


@migrations(name="0027_slack_installations")
def m0027_slack_installations(db: Database) -> None:
    """Installs ("Add to Slack", issue 20): one row per workspace that installed the app, its bot
    token (and, with token rotation, refresh token) Fernet-encrypted like the X tokens; and the
    install flow's OAuth states, single-use with an expiry."""
    for statement in SLACK_INSTALLATIONS.split(";"):
        if statement.strip():
            db.execute(statement)


# The same statements on both engines. ``install_id`` is ``{enterprise_id}/{team_id}`` (either may
# be empty), the one key ``rotate-keys`` needs. ``refresh_claim``: the instance refreshing the bot
# token now (Slack's refresh tokens are single-use: one refresh across instances).
SLACK_INSTALLATIONS = """
CREATE TABLE slack_installations (
    install_id TEXT PRIMARY KEY,
    enterprise_id TEXT NOT NULL,
    team_id TEXT NOT NULL,
    enterprise_name TEXT,
    team_name TEXT,
    app_id TEXT,
    bot_id TEXT,
    bot_user_id TEXT,
    bot_scopes TEXT NOT NULL,
    bot_token TEXT NOT NULL,          -- Fernet ciphertext
    bot_refresh_token TEXT,           -- Fernet ciphertext, with token rotation
    bot_token_expires_at DOUBLE PRECISION,
    installer_user_id TEXT,
    is_enterprise_install INTEGER NOT NULL,
    installed_at DOUBLE PRECISION NOT NULL,
    refresh_claim TEXT,
    refresh_claimed_at DOUBLE PRECISION
);
CREATE TABLE slack_oauth_states (
    state TEXT PRIMARY KEY,
    expires_at DOUBLE PRECISION NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
)
"""


@migrations(name="0028_xchat_read_gaps")
def m0028_xchat_read_gaps(db: Database) -> None:
    """An X Chat read left unfinished, kept across polls (issue 19), as ``cursors.gap_*`` (0016)
    is for the legacy DMs: X pages a conversation's events newest first only, so when it has more
    new ones than one read takes, the cursor stays where it was (``newest_sequence_id``) and the
    next reads go on from ``gap_token`` (X's pagination token; NULL: from the newest again) until
    they reach it; only then does the cursor move to ``gap_newest`` (the newest event that read
    saw). Meanwhile the conversation's channels post nothing (``rows.inbound_waits``), to keep X's
    order. ``gap_restarts``: how often X refused the token."""
    for statement in XCHAT_READ_GAPS.split(";"):
        if statement.strip():
            db.execute(statement)


# The same statement on both engines.
XCHAT_READ_GAPS = (
    "ALTER TABLE xchat_cursors ADD COLUMN gap_token TEXT; "
    "ALTER TABLE xchat_cursors ADD COLUMN gap_newest TEXT; "
    "ALTER TABLE xchat_cursors ADD COLUMN gap_restarts INTEGER NOT NULL DEFAULT 0"
)


@migrations(name="0029_outbox_untold_failure")
def m0029_outbox_untold_failure(db: Database) -> None:
    """A failed row whose author has not been told yet (``outbox.untold_failure``: the failure's
    kind, cleared once the ⚠️ and the ephemeral are out). It is written in the same commit as the
    failure, so a process killed between failing a message and telling its author leaves a row
    the next start tells (before, a failed row was final and the author never heard)."""
    for statement in OUTBOX_UNTOLD_FAILURE.split(";"):
        if statement.strip():
            db.execute(statement)


# The same statements on both engines; rows that failed before this was kept were told then.
OUTBOX_UNTOLD_FAILURE = (
    "ALTER TABLE outbox ADD COLUMN untold_failure TEXT; "
    "CREATE INDEX outbox_untold_failure ON outbox (id) WHERE untold_failure IS NOT NULL"
)


@migrations(name="0031_lookup_indexes")
def m0031_lookup_indexes(db: Database) -> None:
    """Indexes for the hot paths' targeted reads (``find_accounts``, ``find_mappings``): a push,
    an echo check or a Home view reads the few rows it needs, not the whole table, so its cost
    stays flat as a deployment grows to thousands of accounts and mappings (issue 18)."""
    for statement in LOOKUP_INDEXES.split(";"):
        if statement.strip():
            db.execute(statement)


# The same statements on both engines.
LOOKUP_INDEXES = (
    "CREATE INDEX accounts_x_user ON accounts (x_user_id); "
    "CREATE INDEX mappings_conversation ON mappings (conversation_id); "
    "CREATE INDEX mappings_account ON mappings (account_id)"
)


@migrations(name="0033_mappings_groups")
def m0033_mappings_groups(db: Database) -> None:
    """The accounts with a group bridged, read by the poller on every pass
    (``accounts_with_groups``), found by a partial index of the group mappings instead of a scan
    of every mapping (66 ms a pass with 100,000 mappings; issue 18)."""
    db.execute(MAPPINGS_GROUPS_INDEX)


# The same statement on both engines; its WHERE is ``accounts_with_groups``'s, word for word, so
# both planners can use it.
MAPPINGS_GROUPS_INDEX = (
    "CREATE INDEX mappings_groups ON mappings (account_id) WHERE kind = 'group' "
    "OR (conversation_id <> '' AND conversation_id NOT LIKE '%-%')"
)
