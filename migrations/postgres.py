"""PostgreSQL schema migrations: numbered, append-only. Never edit one that has shipped; add the next.

The same tables as the SQLite migrations in ``migrations/__init__.py`` reach after all
of theirs, so ``xdm-bridge copy-db`` can move rows across column for column. The
numbering is PostgreSQL's own (the SQLite history cannot be replayed here: sqlite-utils'
``add_column`` and SQLite triggers do not exist in PostgreSQL).

One small version table, ``schema_migrations``, as sqlite-utils keeps
``_sqlite_migrations``: each step runs in a transaction together with its row, so a
failed step rolls back and stays pending. A session advisory lock serialises
instances that start at once (a rolling deploy), so a step never runs twice.

Why not a migration tool shared by both engines: sqlite-utils' ``Migrations`` already
owns the SQLite history, and the tools that speak both (Alembic, yoyo) would bring
SQLAlchemy or a second, parallel history for SQLite; a list of SQL strings is all this
needs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import asyncpg

from migrations import (
    CONSENTS,
    LOOKUP_INDEXES,
    MAPPINGS_GROUPS_INDEX,
    OUTBOX_UNTOLD_FAILURE,
    SLACK_INSTALLATIONS,
    XCHAT_CURSORS,
    XCHAT_IDENTITIES,
    XCHAT_READ_GAPS,
)

log = logging.getLogger("migrations.postgres")

MIGRATION_LOCK = 0x78646D0001  # pg_advisory_lock key: "xdm" + 1, one per database
PENDING_STATES = "('queued', 'sending', 'waiting')"

# Frozen as applied (a migration never changes): xdm_accept_v1 takes a Slack message into the
# outbox under its channel's lock; xdm_mark_sent_v1 records a send and returns the channel's next row.
HOT_PATH_FUNCTIONS = r"""
CREATE OR REPLACE FUNCTION xdm_accept_v1(text, text, text, text, text, double precision, text, text,
                                                text, boolean)
RETURNS TABLE (busy_before boolean, item outbox) LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    m mappings;
    m_participant text;
    m_conversation text;
    m_group text;
BEGIN
    -- The channel's mapping row, locked until commit (as _lock_channel); none: not mapped.
    SELECT * INTO m FROM mappings WHERE team_id = $1 AND channel_id = $2 FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- Mapping.target: a DM names its participant, a group X has not created yet its members.
    IF m.kind = 'dm' THEN
        m_participant := m.participant_id;
    ELSIF m.kind = 'group' AND m.conversation_id IS NULL THEN
        m_group := COALESCE(m.participant_ids, '[]');
    ELSE
        m_conversation := m.conversation_id;
    END IF;
    RETURN QUERY
        WITH seen AS (
            INSERT INTO seen_events (event_id, seen_at) SELECT $7::text, $6 WHERE $7::text IS NOT NULL
            ON CONFLICT DO NOTHING RETURNING 1
        ),
        fresh AS (SELECT ($7::text IS NULL OR EXISTS (SELECT 1 FROM seen)) AS ok),
        busy AS (
            SELECT EXISTS (
                SELECT 1 FROM outbox WHERE team_id = $1 AND channel_id = $2
                    AND state IN ('queued', 'sending', 'waiting')
            ) AS before
        ),
        n AS (SELECT nextval(pg_get_serial_sequence('outbox', 'id')) AS id FROM fresh WHERE ok),
        ins AS (
            INSERT INTO outbox (id, seq, part, parts_total, team_id, channel_id, slack_ts, ref_ts,
                                author_id, account_id, target_participant, target_conversation,
                                target_group, text, source, state, attempts, next_attempt_at,
                                created_at, hourglass, kind, held_for, held_state)
            SELECT n.id, n.id, 0, 1, $1, $2, $3, $3, $4, m.account_id, m_participant, m_conversation, m_group,
                   NULL, $5, CASE WHEN m.held_for IS NULL THEN 'queued' ELSE 'held' END, 0, 0, $6, 0,
                   'message', m.held_for, CASE WHEN m.held_for IS NULL THEN NULL ELSE 'queued' END
            FROM n
            ON CONFLICT DO NOTHING
            RETURNING outbox AS item
        ),
        note AS (SELECT pg_notify($8, $9) FROM ins WHERE $10)
    SELECT (SELECT before FROM busy), ins.item FROM ins WHERE (SELECT COUNT(*) FROM note) >= 0;
    IF NOT FOUND THEN
        RETURN QUERY SELECT NULL::boolean, NULL::outbox;  -- accepted before
    END IF;
END
$fn$;

CREATE OR REPLACE FUNCTION xdm_mark_sent_v1(text, text, text[], integer[], integer[],
                                                   double precision[], double precision, bigint)
RETURNS outbox LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    done record;
    head outbox;
BEGIN
    -- The channel's lock first, so the next head read below sees every accept committed.
    PERFORM 1 FROM mappings
    WHERE (team_id, channel_id) = (SELECT team_id, channel_id FROM outbox WHERE id = $8) FOR NO KEY UPDATE;
    -- This commit need not wait for the disk: if the server lost it, the row would be 'sending'
    -- again and read back from X before any resend, as after any crash between the POST and
    -- here; and the next row's claim (a waiting commit) writes the log up to itself, so it never
    -- survives without this.
    PERFORM set_config('synchronous_commit', 'off', true);
    WITH budget AS (
        INSERT INTO budgets (key, limit_, remaining, reset_at)
        SELECT * FROM unnest($3::text[], $4::integer[], $5::integer[], $6::double precision[])
        ON CONFLICT (key) DO UPDATE SET limit_ = excluded.limit_, remaining = excluded.remaining,
            reset_at = excluded.reset_at),
    sent AS (
        UPDATE outbox SET state = 'sent', dm_event_id = $1, sent_at = $7, last_error = NULL,
            target_conversation = CASE WHEN target_participant IS NULL
                                       THEN COALESCE(target_conversation, $2) END
        WHERE id = $8
        RETURNING team_id, channel_id, slack_ts, part, target_participant, target_group
    ),
    mapped AS (
        INSERT INTO message_map (team_id, channel_id, slack_ts, part, conversation_id, dm_event_id,
                                 created_at)
        SELECT team_id, channel_id, slack_ts, part, $2, $1, $7 FROM sent
        WHERE $1 IS NOT NULL  -- X took it without saying which event: nothing to map
        ON CONFLICT DO NOTHING
    ),
    -- X names the 1-to-1 conversation on first send; keep it for status and reads.
    named AS (
        UPDATE mappings AS m SET conversation_id = $2 FROM sent AS s
        WHERE s.target_participant IS NOT NULL AND $2 IS NOT NULL AND m.team_id = s.team_id
          AND m.channel_id = s.channel_id AND m.kind = 'dm'
          AND m.participant_id = s.target_participant AND m.conversation_id IS DISTINCT FROM $2
    )
    SELECT team_id, channel_id, target_group INTO done FROM sent;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF done.target_group IS NOT NULL AND $2 IS NOT NULL THEN
        -- X created the channel's group: the mapping and every row still to send name it (so
        -- the next row does not create another group).
        UPDATE mappings SET conversation_id = $2
        WHERE team_id = done.team_id AND channel_id = done.channel_id AND kind = 'group'
          AND conversation_id IS NULL;
        UPDATE outbox SET target_conversation = $2
        WHERE team_id = done.team_id AND channel_id = done.channel_id AND target_conversation IS NULL
          AND target_participant IS NULL AND target_group IS NOT NULL;
    END IF;
    SELECT * INTO head FROM outbox
    WHERE team_id = done.team_id AND channel_id = done.channel_id
        AND state IN ('queued', 'sending', 'waiting')
    ORDER BY seq, part LIMIT 1;
    RETURN head;
END
$fn$;
"""


MIGRATIONS: tuple[tuple[str, str], ...] = (
    (
        "0001_initial",
        f"""
        CREATE TABLE accounts (
            id BIGSERIAL PRIMARY KEY,
            team_id TEXT NOT NULL,
            slack_user_id TEXT NOT NULL,
            x_user_id TEXT NOT NULL,
            x_username TEXT NOT NULL,
            access_token TEXT NOT NULL,      -- Fernet ciphertext
            refresh_token TEXT,              -- Fernet ciphertext
            expires_at DOUBLE PRECISION,
            scope TEXT DEFAULT '',
            needs_reconnect INTEGER DEFAULT 0,
            created_at DOUBLE PRECISION,
            updated_at DOUBLE PRECISION
        );
        CREATE UNIQUE INDEX idx_accounts_team_id_slack_user_id ON accounts (team_id, slack_user_id);

        CREATE TABLE oauth_states (
            state TEXT PRIMARY KEY,
            code_verifier TEXT NOT NULL,     -- Fernet ciphertext
            team_id TEXT NOT NULL,
            slack_user_id TEXT NOT NULL,
            channel_id TEXT,
            response_url TEXT,
            expires_at DOUBLE PRECISION NOT NULL,
            used INTEGER DEFAULT 0
        );

        CREATE TABLE mappings (
            team_id TEXT NOT NULL,
            channel_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            account_id BIGINT NOT NULL REFERENCES accounts (id),
            conversation_id TEXT,
            participant_id TEXT,
            created_by TEXT,
            created_at DOUBLE PRECISION,
            PRIMARY KEY (team_id, channel_id)
        );

        CREATE TABLE outbox (
            id BIGSERIAL PRIMARY KEY,
            seq BIGINT NOT NULL,
            part INTEGER NOT NULL,
            parts_total INTEGER DEFAULT 1,
            team_id TEXT NOT NULL,
            channel_id TEXT NOT NULL,
            slack_ts TEXT NOT NULL,
            author_id TEXT,
            account_id BIGINT NOT NULL REFERENCES accounts (id),
            target_participant TEXT,
            target_conversation TEXT,
            text TEXT,
            source TEXT,                     -- JSON: what rendering needs
            state TEXT NOT NULL,
            attempts INTEGER DEFAULT 0,
            next_attempt_at DOUBLE PRECISION DEFAULT 0.0,
            last_error TEXT,
            dm_event_id TEXT,
            created_at DOUBLE PRECISION,
            sending_since DOUBLE PRECISION,
            held_since DOUBLE PRECISION,
            hourglass INTEGER DEFAULT 0,
            sent_at DOUBLE PRECISION,
            kind TEXT NOT NULL DEFAULT 'message',
            ref_ts TEXT,
            media TEXT,
            media_id TEXT
        );
        CREATE UNIQUE INDEX idx_outbox_team_id_channel_id_slack_ts_part
            ON outbox (team_id, channel_id, slack_ts, part);
        -- Heads are found by a loose index scan over this index (one probe per channel),
        -- so a backlog does not slow the worker down.
        CREATE INDEX outbox_pending ON outbox (team_id, channel_id, seq, part)
            WHERE state IN {PENDING_STATES};
        CREATE INDEX outbox_account_state ON outbox (account_id, state);

        CREATE TABLE message_map (
            team_id TEXT NOT NULL,
            channel_id TEXT NOT NULL,
            slack_ts TEXT NOT NULL,
            part INTEGER NOT NULL,
            conversation_id TEXT,
            dm_event_id TEXT NOT NULL,
            created_at DOUBLE PRECISION,
            PRIMARY KEY (team_id, channel_id, slack_ts, part)
        );
        CREATE UNIQUE INDEX idx_message_map_dm_event_id ON message_map (dm_event_id);

        CREATE TABLE budgets (
            key TEXT PRIMARY KEY,
            limit_ INTEGER,
            remaining INTEGER,
            reset_at DOUBLE PRECISION
        );

        CREATE TABLE seen_events (event_id TEXT PRIMARY KEY, seen_at DOUBLE PRECISION);
        CREATE INDEX idx_seen_events_seen_at ON seen_events (seen_at);
        """,
    ),
    (
        # SQLite's 0005 (issue 11): when X's media id was obtained (it expires after 24 h), and
        # uploads begun and never finished (one that keeps climbing takes the process down).
        "0002_media_lifetime_and_attempts",
        """
        ALTER TABLE outbox ADD COLUMN media_uploaded_at DOUBLE PRECISION;
        ALTER TABLE outbox ADD COLUMN media_unfinished INTEGER NOT NULL DEFAULT 0;
        """,
    ),
    (
        # SQLite's 0009 (issue 10): the X handle of a 1-to-1 mapping's other person.
        "0003_mapping_participant_username",
        "ALTER TABLE mappings ADD COLUMN participant_username TEXT;",
    ),
    (
        # SQLite's 0007 (issue 12): disconnecting an account pauses its mappings; a connect flow
        # bound to one browser (browser_hash), with what the bridge's page shows.
        "0004_disconnect_and_connect_page",
        """
        ALTER TABLE accounts ADD COLUMN disconnected_at DOUBLE PRECISION;
        ALTER TABLE mappings ADD COLUMN paused_at DOUBLE PRECISION;
        ALTER TABLE mappings ADD COLUMN paused_by TEXT;
        ALTER TABLE oauth_states ADD COLUMN browser_hash TEXT;
        ALTER TABLE oauth_states ADD COLUMN slack_user_name TEXT;
        ALTER TABLE oauth_states ADD COLUMN team_name TEXT;
        """,
    ),
    (
        # SQLite's 0004 (issue 11): a delete that catches a send in flight (deleted_at: read back,
        # never sent again), and rows that name exactly one target (a 1-to-1 row keeps its
        # participant; the conversation id an old version wrote beside it goes).
        "0005_outbox_deleted_and_one_target",
        """
        ALTER TABLE outbox ADD COLUMN deleted_at DOUBLE PRECISION;
        UPDATE outbox SET target_conversation = NULL
        WHERE target_participant IS NOT NULL AND target_conversation IS NOT NULL;
        """,
    ),
    (
        # SQLite's 0006 (issue 11): retention prunes by age in batches (indexes), and groups
        # created through the outbox (the mapping's participants, the rows' copy of them).
        "0006_retention_and_group_creation",
        """
        CREATE INDEX IF NOT EXISTS outbox_created_at ON outbox (created_at);
        CREATE INDEX IF NOT EXISTS message_map_created_at ON message_map (created_at);
        ALTER TABLE mappings ADD COLUMN participant_ids TEXT;
        ALTER TABLE outbox ADD COLUMN target_group TEXT;
        """,
    ),
    (
        # SQLite's 0008 (issue 13): X → Slack. ``inbound``: one row per X event to post into
        # Slack, unique by ``dm_event_id`` (push and poll, on any instance, meet here); ``seq`` is
        # the snowflake as an integer (X's order in a channel); ``state`` is queued | posting |
        # posted | skipped. ``cursors``: per account, the newest X event taken from a read.
        "0007_inbound",
        """
        CREATE TABLE inbound (
            id BIGSERIAL PRIMARY KEY,
            dm_event_id TEXT NOT NULL,
            seq BIGINT NOT NULL,
            account_id BIGINT,
            conversation_id TEXT,
            team_id TEXT,
            channel_id TEXT,
            event_type TEXT,
            sender_id TEXT,
            payload TEXT,                    -- JSON: text, sender's name/handle/avatar, media
            origin TEXT NOT NULL,            -- poll | push | backfill | sent
            state TEXT NOT NULL,
            attempts INTEGER DEFAULT 0,
            next_attempt_at DOUBLE PRECISION DEFAULT 0.0,
            posting_since DOUBLE PRECISION,
            slack_ts TEXT,
            last_error TEXT,
            created_at DOUBLE PRECISION,
            posted_at DOUBLE PRECISION
        );
        CREATE UNIQUE INDEX idx_inbound_dm_event_id ON inbound (dm_event_id);
        CREATE INDEX inbound_pending ON inbound (team_id, channel_id, seq)
            WHERE state IN ('queued', 'posting');

        CREATE TABLE cursors (
            account_id BIGINT PRIMARY KEY REFERENCES accounts (id),
            newest_event_id TEXT,
            updated_at DOUBLE PRECISION
        );
        """,
    ),
    (
        # SQLite's 0012: mappings and unsent messages held for the X account they were made
        # with, after their Slack user connected a different one (see hold_for_previous_account).
        "0008_held_for_previous_account",
        """
        ALTER TABLE mappings ADD COLUMN held_for TEXT, ADD COLUMN held_for_username TEXT;
        ALTER TABLE outbox ADD COLUMN held_for TEXT, ADD COLUMN held_state TEXT;
        """,
    ),
    (
        # SQLite's 0013: inbound unique per (event, channel), so two channels bridged to one
        # conversation each get each event once; a channel's wanted history kept until it is
        # queued (``backfills``); the leader's next read of each account (``read_schedule``),
        # so `/xdm status` on a standby can say it; the read cursor of an X account switched away
        # from, put back when it is connected again (``parked_cursors``).
        "0009_inbound_per_channel_backfills_schedule",
        """
        DROP INDEX IF EXISTS idx_inbound_dm_event_id;
        CREATE UNIQUE INDEX inbound_event_channel ON inbound
            (dm_event_id, COALESCE(team_id, ''), COALESCE(channel_id, ''));
        CREATE TABLE backfills (
            account_id BIGINT NOT NULL,
            conversation_id TEXT NOT NULL,
            bridged_at DOUBLE PRECISION NOT NULL,
            requested_at DOUBLE PRECISION,
            PRIMARY KEY (account_id, conversation_id)
        );
        CREATE TABLE read_schedule (
            account_id BIGINT PRIMARY KEY,
            next_read_at DOUBLE PRECISION,
            pushed BOOLEAN NOT NULL DEFAULT FALSE,
            updated_at DOUBLE PRECISION
        );
        CREATE TABLE parked_cursors (
            account_id BIGINT NOT NULL,
            x_user_id TEXT NOT NULL,
            newest_event_id TEXT,
            updated_at DOUBLE PRECISION,
            PRIMARY KEY (account_id, x_user_id)
        );
        """,
    ),
    (
        # SQLite's 0016: the message map unique per (event, channel), so a post into a second
        # channel bridged to one conversation is mapped too; a read X had more new events for
        # than one poll takes goes on from X's pagination token on the next polls (``gap_*``)
        # and the cursor moves only once it reaches where it was (parked with its cursor when the
        # Slack user switches X accounts).
        "0012_message_map_per_channel_and_read_gaps",
        """
        DROP INDEX IF EXISTS idx_message_map_dm_event_id;
        CREATE UNIQUE INDEX message_map_event_channel ON message_map (dm_event_id, team_id, channel_id);
        ALTER TABLE cursors ADD COLUMN gap_token TEXT, ADD COLUMN gap_newest TEXT,
            ADD COLUMN gap_oldest TEXT, ADD COLUMN gap_restarts INTEGER NOT NULL DEFAULT 0,
            ADD COLUMN gap_opened_at DOUBLE PRECISION;
        ALTER TABLE parked_cursors ADD COLUMN gap_newest TEXT, ADD COLUMN gap_oldest TEXT;
        """,
    ),
    (
        # SQLite's 0017: finished inbound rows are pruned (by age), and what `/xdm status` asks
        # of the inbound table reads an index instead of the account's whole history.
        "0013_inbound_retention",
        """
        CREATE INDEX inbound_finished_created_at ON inbound (created_at)
            WHERE state IN ('posted', 'skipped', 'failed');
        CREATE INDEX inbound_account_state ON inbound (account_id, state);
        CREATE INDEX inbound_account_created_at ON inbound (account_id, created_at);
        CREATE INDEX inbound_failed ON inbound (team_id, channel_id, id) WHERE state = 'failed';
        """,
    ),
    (
        # SQLite's 0018: an X authorization waits (tokens encrypted) for a click in Slack by the
        # Slack user who ran `/xdm connect` before it is bound to them.
        "0014_pending_connections",
        """
        CREATE TABLE pending_connections (
            id TEXT PRIMARY KEY,
            team_id TEXT NOT NULL,
            slack_user_id TEXT NOT NULL,
            channel_id TEXT,
            response_url TEXT,
            x_user_id TEXT NOT NULL,
            x_username TEXT NOT NULL,
            access_token TEXT NOT NULL,      -- Fernet ciphertext
            refresh_token TEXT,              -- Fernet ciphertext
            token_expires_at DOUBLE PRECISION,
            scope TEXT,
            expires_at DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX idx_pending_connections_expires_at ON pending_connections (expires_at);
        """,
    ),
    # SQLite's 0019, the same statement: X Chat identities of accounts the operator controls.
    ("0015_xchat_identities", XCHAT_IDENTITIES),
    # SQLite's 0020: consents (a BIGSERIAL id where SQLite's INTEGER PRIMARY KEY numbers itself).
    ("0016_consents", CONSENTS.replace("id INTEGER PRIMARY KEY", "id BIGSERIAL PRIMARY KEY")),
    (
        # PostgreSQL only (several instances): the delivery leader's lease, one row, renewed by the
        # leader every second (adapters/store/leader.py). Times are epoch seconds, the server's.
        "0017_leader_lease",
        """
        CREATE TABLE leader_lease (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            holder TEXT NOT NULL,
            term BIGINT NOT NULL,
            renewed_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        );
        """,
    ),
    (
        # X Chat (issue 19): a mapping bridges a legacy DM or an encrypted X Chat conversation.
        "0021_mapping_encrypted",
        "ALTER TABLE mappings ADD COLUMN encrypted BOOLEAN NOT NULL DEFAULT FALSE;",
    ),
    (
        # X Chat, Slack to X (issue 19): a row of an encrypted conversation says so itself (set on
        # insert from the message's earlier rows, else the channel's mapping), and keeps the
        # message as encrypted and signed before its first attempt (see SQLite's 0025).
        "0022_outbox_chat",
        """
        ALTER TABLE outbox ADD COLUMN encrypted BOOLEAN NOT NULL DEFAULT FALSE;
        ALTER TABLE outbox ADD COLUMN chat TEXT;
        CREATE FUNCTION outbox_encrypted() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NOT NEW.encrypted THEN
                NEW.encrypted := COALESCE(
                    (SELECT o.encrypted FROM outbox AS o WHERE o.team_id = NEW.team_id
                     AND o.channel_id = NEW.channel_id AND o.slack_ts = NEW.ref_ts AND o.part = 0),
                    (SELECT m.encrypted FROM mappings AS m WHERE m.team_id = NEW.team_id
                     AND m.channel_id = NEW.channel_id AND m.account_id = NEW.account_id),
                    FALSE);
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER outbox_encrypted BEFORE INSERT ON outbox
            FOR EACH ROW EXECUTE FUNCTION outbox_encrypted();
        """,
    ),
    # SQLite's 0026, the same statement: how far each encrypted X Chat conversation was read.
    ("0023_xchat_inbound", XCHAT_CURSORS),
    # The hot path's two functions (adapters/store/postgres.py accept_if_mapped, mark_sent), once
    # per database. They used to be defined on every pool connection in pg_temp, and a pooler's
    # DISCARD TEMP/ALL left that connection failing for good. A changed body is a new migration
    # with a new name (_v2), so instances of the old and new code can run side by side.
    ("0024_hot_path_functions", HOT_PATH_FUNCTIONS),
    # SQLite's 0027, the same statements: "Add to Slack" installs and their OAuth states.
    ("0025_slack_installations", SLACK_INSTALLATIONS),
    # SQLite's 0028, the same statements: an unfinished X Chat read kept across polls.
    ("0026_xchat_read_gaps", XCHAT_READ_GAPS),
    # SQLite's 0029, the same statements: a failed row whose author is still to be told.
    ("0027_outbox_untold_failure", OUTBOX_UNTOLD_FAILURE),
    # SQLite's 0031, the same statements: the hot paths' targeted reads of accounts and mappings.
    ("0029_lookup_indexes", LOOKUP_INDEXES),
    # SQLite's 0033, the same statement: the poller's accounts with a group, by a partial index.
    ("0031_mappings_groups", MAPPINGS_GROUPS_INDEX),
)

# Tables in an order that satisfies the foreign keys (for copy-db and for tests).
TABLES = (
    "accounts",
    "oauth_states",
    "mappings",
    "outbox",
    "message_map",
    "budgets",
    "seen_events",
    "inbound",
    "cursors",
    "backfills",
    "read_schedule",
    "parked_cursors",
    "pending_connections",
    "xchat_identities",
    "xchat_peers",
    "consents",
    "xchat_cursors",
    "slack_installations",
    "slack_oauth_states",
)


async def _ensure_table(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(name TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )


async def applied(conn: asyncpg.Connection) -> list[str]:
    """Names of the migrations already applied (empty on a new database)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return []
    return [r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations ORDER BY name")]


async def pending(conn: asyncpg.Connection) -> list[str]:
    """Names of the migrations not yet applied (for ``doctor``)."""
    done = set(await applied(conn))
    return [name for name, _ in MIGRATIONS if name not in done]


async def apply(conn: asyncpg.Connection, progress: Callable[[str], None] = lambda _: None) -> list[str]:
    """Apply every pending migration, each in its own transaction; return the names applied.
    ``progress`` is told each one before it runs (one may take long on a big table)."""
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await _ensure_table(conn)
        done = set(await applied(conn))
        pending = [(name, sql) for name, sql in MIGRATIONS if name not in done]
        ran = []
        for index, (name, sql) in enumerate(pending):
            progress(f"applying migration {name} ({index + 1} of {len(pending)})…")
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
            log.info("migration applied", extra={"migration": name})
            ran.append(name)
        return ran
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
