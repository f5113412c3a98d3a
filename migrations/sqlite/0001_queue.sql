-- missive's mail queue, version 1. Times are milliseconds since the Unix epoch (UTC).

-- One row per message. Its bytes live in missive_bodies: SQLite rewrites a whole row
-- on every update, and a state change should not rewrite the message.
CREATE TABLE missive_messages (
    id              INTEGER PRIMARY KEY,
    message_id      TEXT    NOT NULL,
    -- The caller's key; a second enqueue with it returns this row.
    idempotency_key TEXT    UNIQUE,
    template        TEXT    NOT NULL,
    tags            TEXT    NOT NULL,           -- JSON array of strings
    envelope_from   TEXT,
    recipients      TEXT    NOT NULL,           -- JSON [{address, state, code, reply}]
    state           TEXT    NOT NULL,           -- queued sending deferred sent failed held cancelled
    attempts        INTEGER NOT NULL DEFAULT 0,
    -- When it is due; for `sending`, when the lease runs out (so one index finds both).
    next_attempt_at INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    lease_owner     TEXT,
    lease_until     INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    last_error      TEXT
);
CREATE INDEX missive_messages_due ON missive_messages (state, next_attempt_at);
CREATE INDEX missive_messages_template ON missive_messages (template, id);

-- The exact MIME bytes that every attempt sends.
CREATE TABLE missive_bodies (
    message INTEGER PRIMARY KEY REFERENCES missive_messages (id) ON DELETE CASCADE,
    raw     BLOB    NOT NULL
);

-- Every delivery attempt: when, what came of it, the server's code and reply.
CREATE TABLE missive_attempts (
    id       INTEGER PRIMARY KEY,
    message  INTEGER NOT NULL REFERENCES missive_messages (id) ON DELETE CASCADE,
    attempt  INTEGER NOT NULL,
    at       INTEGER NOT NULL,
    outcome  TEXT    NOT NULL,                  -- sent partial deferred unknown failed expired
    code     INTEGER,
    reply    TEXT    NOT NULL,
    worker   TEXT    NOT NULL
);
CREATE INDEX missive_attempts_message ON missive_attempts (message, id);
