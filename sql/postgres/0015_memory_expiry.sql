-- The memory expiry sweeper (issue 13) finds items past their ttl_at across tenants as the
-- auditor, and then redacts each on its owner's behalf. It reads ids, owners and expiry only:
-- the column grant keeps the ciphertext's row out of its reach.
GRANT SELECT (id, tenant_id, owner_id, ttl_at) ON ledger.memory_items TO logline_auditor;
CREATE POLICY memory_items_audit ON ledger.memory_items FOR SELECT TO logline_auditor USING (true);
CREATE INDEX IF NOT EXISTS memory_items_ttl ON ledger.memory_items (ttl_at) WHERE ttl_at IS NOT NULL;
