-- Recall speed (issue 13 §7). Recall first asks which items are in the caller's scope; this
-- index holds every column that question reads, so it is answered from the index alone instead
-- of walking table pages that are mostly embedding BLOBs.
CREATE INDEX IF NOT EXISTS memory_items_scope ON memory_items
    (tenant_id, owner_id, layer, session_id, visibility, ttl_at, created_at, id);

-- How many items hold each keyed term (`doc`), read by recall to leave out terms so common that
-- ranking every item holding them would cost more than it tells. Derived by FTS5 from its own
-- index: nothing to keep in step, and a forgotten item's terms leave it with the item.
CREATE VIRTUAL TABLE IF NOT EXISTS memory_fts_vocab USING fts5vocab (memory_fts, row);
