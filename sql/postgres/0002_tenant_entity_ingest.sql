-- Paging one kind of span in one tenant (`entity_type = … AND tenant_id = … ORDER BY ingest_id`,
-- as the Midnight Ruler reads every contract and every decision of a midnight) walks this index
-- in order and stops at the page size, instead of collecting and sorting all the tenant's rows
-- for every page (quadratic over a large tenant).
CREATE INDEX spans_tenant_entity_ingest ON ledger.spans (tenant_id, entity_type, ingest_id);
