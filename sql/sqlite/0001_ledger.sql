-- The embedded ledger. Same shape as sql/postgres/0001_ledger.sql; SQLite has no row level
-- security, so the store applies the visibility predicate in every query instead.

-- One row per span version. `envelope` is the canonical JSON that `curr_hash` digests; the other
-- columns are indexes over it (verify cross-checks them). `ingest_id` orders reads and cursors.
CREATE TABLE spans (
    ingest_id       INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id       TEXT    NOT NULL,
    chain_pos       INTEGER NOT NULL,
    id              TEXT    NOT NULL,
    seq             INTEGER NOT NULL CHECK (seq >= 0),
    entity_type     TEXT    NOT NULL,
    owner_id        TEXT    NOT NULL,
    visibility      TEXT    NOT NULL CHECK (visibility IN ('private', 'tenant', 'public')),
    at              TEXT    NOT NULL,
    recorded_at     TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    parent_id       TEXT,
    related_to      TEXT    NOT NULL DEFAULT '[]',
    trace_id        TEXT,
    idempotency_key TEXT,
    envelope        TEXT    NOT NULL,
    curr_hash       TEXT    NOT NULL,
    signature       TEXT    NOT NULL,
    UNIQUE (tenant_id, chain_pos),
    UNIQUE (id, seq)
);
CREATE INDEX spans_entity_at ON spans (entity_type, at);
CREATE INDEX spans_at ON spans (at);
CREATE INDEX spans_trace ON spans (trace_id) WHERE trace_id IS NOT NULL;
CREATE INDEX spans_parent ON spans (parent_id) WHERE parent_id IS NOT NULL;

-- Redactable content, committed to by `body_digest` inside the envelope. Deleted only by a
-- redaction (see the trigger), which leaves the chain verifiable.
CREATE TABLE span_bodies (
    id        TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    tenant_id TEXT    NOT NULL,
    who       TEXT,
    did       TEXT,
    this      TEXT,
    body      TEXT    NOT NULL,
    PRIMARY KEY (id, seq)
);
CREATE INDEX span_bodies_who ON span_bodies (who);

-- Which span ids are withheld, and by which redaction span.
CREATE TABLE redactions (
    target_id    TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    redaction_id TEXT NOT NULL,
    at           TEXT NOT NULL
);

-- Derived bookkeeping, rebuildable from the ledger: the tip of each tenant chain, the latest
-- seq of each span id, and idempotency keys.
CREATE TABLE chain_heads (
    tenant_id TEXT PRIMARY KEY,
    next_pos  INTEGER NOT NULL,
    last_hash TEXT    NOT NULL
);
CREATE TABLE id_heads (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT    NOT NULL,
    latest_seq INTEGER NOT NULL,
    owner_id   TEXT    NOT NULL,
    visibility TEXT    NOT NULL
);
CREATE TABLE idempotency (
    tenant_id TEXT    NOT NULL,
    key       TEXT    NOT NULL,
    id        TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    chain_pos INTEGER NOT NULL,
    curr_hash TEXT    NOT NULL,
    status    TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, key)
);

-- Append-only, enforced by the database rather than promised by the code.
CREATE TRIGGER spans_no_update BEFORE UPDATE ON spans
BEGIN SELECT RAISE(ABORT, 'ledger is append-only: spans cannot be updated'); END;
CREATE TRIGGER spans_no_delete BEFORE DELETE ON spans
BEGIN SELECT RAISE(ABORT, 'ledger is append-only: spans cannot be deleted'); END;
CREATE TRIGGER bodies_no_update BEFORE UPDATE ON span_bodies
BEGIN SELECT RAISE(ABORT, 'ledger is append-only: span bodies cannot be updated'); END;
CREATE TRIGGER bodies_delete_only_redacted BEFORE DELETE ON span_bodies
WHEN NOT EXISTS (SELECT 1 FROM redactions r WHERE r.target_id = OLD.id)
BEGIN SELECT RAISE(ABORT, 'a span body may only be removed by a redaction span'); END;
CREATE TRIGGER redactions_no_update BEFORE UPDATE ON redactions
BEGIN SELECT RAISE(ABORT, 'redactions are append-only'); END;
CREATE TRIGGER redactions_no_delete BEFORE DELETE ON redactions
BEGIN SELECT RAISE(ABORT, 'redactions are append-only'); END;
CREATE TRIGGER idempotency_no_update BEFORE UPDATE ON idempotency
BEGIN SELECT RAISE(ABORT, 'idempotency keys are append-only'); END;
CREATE TRIGGER idempotency_no_delete BEFORE DELETE ON idempotency
BEGIN SELECT RAISE(ABORT, 'idempotency keys are append-only'); END;
