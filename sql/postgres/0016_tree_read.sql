-- Proofs and checkpoints read a tenant's tree in one statement: its frontier (`merkle_heads`),
-- the stored subtrees and the `curr_hash` of the spans a proof hashes its small subtrees from.
-- Reading them in their own auditor transactions took nine round trips per proof, which cost
-- far more than the reading itself.
--
-- The function runs as `logline_auditor`, who reads every tenant's tree under row level
-- security, exactly as the auditor transactions did. Only the auditor role and its members (the
-- owner role the store connects as) may execute it: `logline_app`, which every request acts as,
-- may not, so no tenant reads another's hashes through it.
--
-- Rows: `kind` 0 is the frontier (`idx` = size, `bytes` = peaks), 1 a stored subtree (`level`,
-- `idx`, `bytes` = hash), 2 a span (`idx` = chain_pos, `curr_hash`). PL/pgSQL so that the plan
-- is cached per connection.
CREATE FUNCTION ledger.tree_read(
    p_tenant text, p_levels smallint[], p_idxs bigint[], p_leaves bigint[]
) RETURNS TABLE (kind smallint, level smallint, idx bigint, bytes bytea, curr_hash text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY
        SELECT 0::smallint, NULL::smallint, h.size, h.peaks, NULL::text
          FROM ledger.merkle_heads h WHERE h.tenant_id = p_tenant
        UNION ALL
        SELECT 1::smallint, n.level, n.idx, n.hash, NULL::text
          FROM unnest(p_levels, p_idxs) AS k(l, i)
          JOIN ledger.merkle_nodes n ON n.tenant_id = p_tenant AND n.level = k.l AND n.idx = k.i
        UNION ALL
        SELECT 2::smallint, NULL::smallint, s.chain_pos, NULL::bytea, s.curr_hash
          FROM ledger.spans s WHERE s.tenant_id = p_tenant AND s.chain_pos = ANY (p_leaves);
END $$;

-- A new owner needs CREATE on the schema, which the auditor otherwise never has: granted for
-- the change of owner only.
GRANT CREATE ON SCHEMA ledger TO logline_auditor;
ALTER FUNCTION ledger.tree_read(text, smallint[], bigint[], bigint[]) OWNER TO logline_auditor;
REVOKE CREATE ON SCHEMA ledger FROM logline_auditor;
REVOKE ALL ON FUNCTION ledger.tree_read(text, smallint[], bigint[], bigint[]) FROM PUBLIC;
