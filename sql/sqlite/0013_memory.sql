-- Memory (issue 13); same shape as sql/postgres/0013_memory.sql. Vectors are little-endian f32
-- BLOBs ranked in Rust; full-text ranking is FTS5 over keyed hashes of the words, never the
-- words themselves.
CREATE TABLE memory_keys (
    tenant_id  TEXT PRIMARY KEY,
    kek_id     TEXT NOT NULL,
    wrapped    TEXT NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE memory_items (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL,
    owner_id   TEXT NOT NULL,
    visibility TEXT NOT NULL CHECK (visibility IN ('private', 'tenant', 'public')),
    session_id TEXT,
    layer      TEXT NOT NULL CHECK (layer IN ('session', 'temporary', 'permanent')),
    created_at TEXT NOT NULL,
    ttl_at     TEXT,
    supersedes TEXT,
    embedding  BLOB NOT NULL
);
CREATE INDEX memory_items_owner ON memory_items (tenant_id, owner_id, created_at);
CREATE INDEX memory_items_session ON memory_items (session_id) WHERE session_id IS NOT NULL;
CREATE INDEX memory_items_supersedes ON memory_items (supersedes) WHERE supersedes IS NOT NULL;

-- Keyed term hashes; rowid = the memory_items row's rowid. `secure-delete` makes FTS5 remove a
-- deleted row's entries from its index instead of leaving them behind delete markers.
CREATE VIRTUAL TABLE memory_fts USING fts5 (terms);
INSERT INTO memory_fts (memory_fts, rank) VALUES ('secure-delete', 1);

-- Forgetting is a redaction: the transaction that withholds the span's body drops the index.
CREATE TRIGGER redactions_forget_memory AFTER INSERT ON redactions
BEGIN
    DELETE FROM memory_fts WHERE rowid = (SELECT rowid FROM memory_items WHERE id = NEW.target_id);
    DELETE FROM memory_items WHERE id = NEW.target_id;
END;
