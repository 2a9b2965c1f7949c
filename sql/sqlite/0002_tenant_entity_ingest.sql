-- Same as sql/postgres/0002: page one kind of span in one tenant in ingest order without a sort.
CREATE INDEX spans_tenant_entity_ingest ON spans (tenant_id, entity_type, ingest_id);
