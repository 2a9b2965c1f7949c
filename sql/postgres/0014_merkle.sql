-- RFC 9162 Merkle trees over each tenant chain (see ledger/src/merkle.rs). Derived data,
-- rebuildable from spans.curr_hash; kept so that proofs and checkpoints cost a few reads.
--
-- The compact range of each tenant's tree: `size` leaves (chain positions 0..size) and the
-- roots of its maximal complete subtrees, 32 bytes each, largest first. Updated under the
-- chain head's row lock, in the appending transaction.
CREATE TABLE ledger.merkle_heads (
    tenant_id text   PRIMARY KEY,
    size      bigint NOT NULL CHECK (size >= 0),
    peaks     bytea  NOT NULL
);
-- Complete subtrees of 16 leaves and more: leaves idx << level .. (idx + 1) << level. Smaller
-- ones are hashed from the spans when a proof needs them.
CREATE TABLE ledger.merkle_nodes (
    tenant_id text     NOT NULL,
    level     smallint NOT NULL,
    idx       bigint   NOT NULL,
    hash      bytea    NOT NULL,
    PRIMARY KEY (tenant_id, level, idx)
);
-- A complete subtree never changes once its leaves exist.
CREATE FUNCTION ledger.merkle_nodes_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'merkle nodes are append-only' USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER merkle_nodes_no_change BEFORE UPDATE OR DELETE ON ledger.merkle_nodes
    FOR EACH ROW EXECUTE FUNCTION ledger.merkle_nodes_append_only();

-- Tenant data: each tenant writes its own tree; the auditor (verify, proofs) reads all.
ALTER TABLE ledger.merkle_heads ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger.merkle_heads FORCE ROW LEVEL SECURITY;
CREATE POLICY merkle_heads_tenant ON ledger.merkle_heads FOR ALL TO logline_app
    USING (tenant_id = ledger.current_tenant()) WITH CHECK (tenant_id = ledger.current_tenant());
CREATE POLICY merkle_heads_audit ON ledger.merkle_heads FOR SELECT TO logline_auditor USING (true);

ALTER TABLE ledger.merkle_nodes ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger.merkle_nodes FORCE ROW LEVEL SECURITY;
CREATE POLICY merkle_nodes_tenant ON ledger.merkle_nodes FOR ALL TO logline_app
    USING (tenant_id = ledger.current_tenant()) WITH CHECK (tenant_id = ledger.current_tenant());
CREATE POLICY merkle_nodes_audit ON ledger.merkle_nodes FOR SELECT TO logline_auditor USING (true);

GRANT SELECT, INSERT, UPDATE ON ledger.merkle_heads TO logline_app;
GRANT SELECT, INSERT ON ledger.merkle_nodes TO logline_app;
GRANT SELECT ON ledger.merkle_heads, ledger.merkle_nodes TO logline_auditor;
