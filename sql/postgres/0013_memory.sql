-- Memory (issue 13). A memory item is a span (`entity_type = 'memory'`) whose content is
-- AES-256-GCM ciphertext; these tables hold what recall needs besides the span: the tenant's
-- wrapped data key, and a derived index row per item (scope columns, keyed term hashes, the
-- embedding). The index is rebuildable from the ledger by whoever holds the data key.

-- One data key per tenant, wrapped by the key-encryption key (derived from the node key, or
-- LOGLINE_MEMORY_KEY). Never in a span body: redacting a body must not touch it.
CREATE TABLE ledger.memory_keys (
    tenant_id  text        PRIMARY KEY,
    kek_id     text        NOT NULL,
    wrapped    text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The recall index. `terms` is a tsvector over keyed hashes of the item's words (never the
-- words), so full-text ranking works without a plaintext index; `embedding` is the item's
-- vector (384 dimensions, the all-MiniLM-L6-v2 / e5-small size every embedder is held to).
CREATE TABLE ledger.memory_items (
    id         uuid        PRIMARY KEY,
    tenant_id  text        NOT NULL,
    owner_id   text        NOT NULL,
    visibility text        NOT NULL CHECK (visibility IN ('private', 'tenant', 'public')),
    session_id text,
    layer      text        NOT NULL CHECK (layer IN ('session', 'temporary', 'permanent')),
    created_at timestamptz NOT NULL,
    ttl_at     timestamptz,
    supersedes uuid,
    terms      tsvector    NOT NULL,
    embedding  vector(384) NOT NULL
);
CREATE INDEX memory_items_owner ON ledger.memory_items (tenant_id, owner_id, created_at DESC);
CREATE INDEX memory_items_session ON ledger.memory_items (session_id) WHERE session_id IS NOT NULL;
CREATE INDEX memory_items_supersedes ON ledger.memory_items (supersedes) WHERE supersedes IS NOT NULL;
CREATE INDEX memory_items_terms ON ledger.memory_items USING gin (terms);
CREATE INDEX memory_items_embedding ON ledger.memory_items USING hnsw (embedding vector_cosine_ops);

-- Forgetting is a redaction: the same transaction that withholds the span's body (its
-- ciphertext) drops the index row, so no embedding or term hash outlives it.
CREATE FUNCTION ledger.memory_forget() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM ledger.memory_items WHERE id = NEW.target_id;
    RETURN NEW;
END $$;
CREATE TRIGGER redactions_forget_memory AFTER INSERT ON ledger.redactions
    FOR EACH ROW EXECUTE FUNCTION ledger.memory_forget();

ALTER TABLE ledger.memory_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger.memory_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY memory_keys_tenant ON ledger.memory_keys FOR ALL TO logline_app
    USING (tenant_id = ledger.current_tenant()) WITH CHECK (tenant_id = ledger.current_tenant());

ALTER TABLE ledger.memory_items ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger.memory_items FORCE ROW LEVEL SECURITY;
CREATE POLICY memory_items_read ON ledger.memory_items FOR SELECT TO logline_app
    USING (ledger.visible(tenant_id, owner_id, visibility));
CREATE POLICY memory_items_write ON ledger.memory_items FOR INSERT TO logline_app
    WITH CHECK (tenant_id = ledger.current_tenant() AND owner_id = ledger.current_principal());
CREATE POLICY memory_items_forget ON ledger.memory_items FOR DELETE TO logline_app
    USING (tenant_id = ledger.current_tenant());

GRANT SELECT, INSERT ON ledger.memory_keys TO logline_app;
GRANT SELECT, INSERT, DELETE ON ledger.memory_items TO logline_app;
