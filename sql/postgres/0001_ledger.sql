-- The LogLine ledger on PostgreSQL.
--
-- The application connects as an owner role but does all its work as `logline_app` (set per
-- transaction, together with the principal in `app.user_id` / `app.tenant_id`), so row level
-- security applies to every read and write. `logline_auditor` may read every chain to verify it.

-- Roles are cluster-wide: tolerate another database (or a concurrent migration) having made them.
DO $$ BEGIN
    CREATE ROLE logline_app NOLOGIN NOSUPERUSER NOBYPASSRLS;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;
DO $$ BEGIN
    CREATE ROLE logline_auditor NOLOGIN NOSUPERUSER NOBYPASSRLS;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;
DO $$ BEGIN
    EXECUTE format('GRANT logline_app, logline_auditor TO %I', current_user);
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;

-- For memory embeddings (later work). Needs a superuser the first time; managed services that
-- ship pgvector let the owner create it.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE SCHEMA ledger;

-- The principal of the current transaction.
CREATE FUNCTION ledger.current_tenant() RETURNS text LANGUAGE sql STABLE
    AS $$ SELECT current_setting('app.tenant_id', true) $$;
CREATE FUNCTION ledger.current_principal() RETURNS text LANGUAGE sql STABLE
    AS $$ SELECT current_setting('app.user_id', true) $$;
-- The visibility rule: public to all, tenant to members, private to the owner.
CREATE FUNCTION ledger.visible(tenant text, owner text, vis text) RETURNS boolean
    LANGUAGE sql STABLE
    AS $$ SELECT vis = 'public'
              OR (tenant = ledger.current_tenant()
                  AND (vis = 'tenant' OR owner = ledger.current_principal())) $$;

-- One row per span version. `envelope` is the canonical JSON that `curr_hash` digests; the other
-- columns index it (verify cross-checks them). `ingest_id` orders reads and cursors.
CREATE TABLE ledger.spans (
    ingest_id       bigserial   NOT NULL UNIQUE,
    tenant_id       text        NOT NULL,
    chain_pos       bigint      NOT NULL CHECK (chain_pos >= 0),
    id              uuid        NOT NULL,
    seq             bigint      NOT NULL CHECK (seq >= 0),
    entity_type     text        NOT NULL,
    owner_id        text        NOT NULL,
    visibility      text        NOT NULL CHECK (visibility IN ('private', 'tenant', 'public')),
    at              timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL,
    status          text        NOT NULL,
    parent_id       uuid,
    related_to      jsonb       NOT NULL DEFAULT '[]',
    trace_id        text,
    idempotency_key text,
    envelope        text        NOT NULL,
    curr_hash       text        NOT NULL,
    signature       text        NOT NULL,
    PRIMARY KEY (tenant_id, chain_pos),
    UNIQUE (id, seq)
);
CREATE INDEX spans_entity_at ON ledger.spans (entity_type, at);
CREATE INDEX spans_at ON ledger.spans (at);
CREATE INDEX spans_trace ON ledger.spans (trace_id) WHERE trace_id IS NOT NULL;
CREATE INDEX spans_parent ON ledger.spans (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX spans_related ON ledger.spans USING gin (related_to);

-- Redactable content, committed to by `body_digest` inside the envelope.
CREATE TABLE ledger.span_bodies (
    id         uuid   NOT NULL,
    seq        bigint NOT NULL,
    tenant_id  text   NOT NULL,
    owner_id   text   NOT NULL,
    visibility text   NOT NULL,
    who        text,
    did        text,
    this       text,
    body       text   NOT NULL,
    PRIMARY KEY (id, seq)
);
CREATE INDEX span_bodies_who ON ledger.span_bodies (who);

CREATE TABLE ledger.redactions (
    target_id    uuid        PRIMARY KEY,
    tenant_id    text        NOT NULL,
    visibility   text        NOT NULL,
    redaction_id uuid        NOT NULL,
    at           timestamptz NOT NULL
);

-- Derived bookkeeping, rebuildable from the ledger. The chain head row is also the per-tenant
-- lock that keeps `chain_pos` gapless with many writers in many processes.
CREATE TABLE ledger.chain_heads (
    tenant_id text   PRIMARY KEY,
    next_pos  bigint NOT NULL,
    last_hash text   NOT NULL
);
CREATE TABLE ledger.id_heads (
    id         uuid   PRIMARY KEY,
    tenant_id  text   NOT NULL,
    latest_seq bigint NOT NULL,
    owner_id   text   NOT NULL,
    visibility text   NOT NULL
);
CREATE TABLE ledger.idempotency (
    tenant_id text   NOT NULL,
    key       text   NOT NULL,
    id        uuid   NOT NULL,
    seq       bigint NOT NULL,
    chain_pos bigint NOT NULL,
    curr_hash text   NOT NULL,
    status    text   NOT NULL,
    PRIMARY KEY (tenant_id, key)
);

-- Append-only, enforced by the database itself.
CREATE FUNCTION ledger.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger is append-only: % on %.% is refused', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER spans_append_only BEFORE UPDATE OR DELETE ON ledger.spans
    FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER spans_no_truncate BEFORE TRUNCATE ON ledger.spans
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER bodies_no_update BEFORE UPDATE ON ledger.span_bodies
    FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER bodies_no_truncate BEFORE TRUNCATE ON ledger.span_bodies
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER redactions_append_only BEFORE UPDATE OR DELETE ON ledger.redactions
    FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER idempotency_append_only BEFORE UPDATE OR DELETE ON ledger.idempotency
    FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();

-- A body may only disappear once a redaction span has withheld it.
CREATE FUNCTION ledger.body_delete_needs_redaction() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM ledger.redactions r WHERE r.target_id = OLD.id) THEN
        RAISE EXCEPTION 'a span body may only be removed by a redaction span'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN OLD;
END $$;
CREATE TRIGGER bodies_delete_only_redacted BEFORE DELETE ON ledger.span_bodies
    FOR EACH ROW EXECUTE FUNCTION ledger.body_delete_needs_redaction();

-- Live streams: a small payload per span (never the row: NOTIFY caps payloads at 8000 bytes).
-- A statement-level trigger over the transition table costs one function call per INSERT
-- statement instead of one per row, which matters for batched ingest.
CREATE FUNCTION ledger.notify_spans() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('logline_spans', json_build_object(
        'id', n.id, 'seq', n.seq, 'tenant', n.tenant_id, 'ingest_id', n.ingest_id)::text)
    FROM new_spans n ORDER BY n.ingest_id;
    RETURN NULL;
END $$;
CREATE TRIGGER spans_notify AFTER INSERT ON ledger.spans
    REFERENCING NEW TABLE AS new_spans
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.notify_spans();

-- Row level security, forced so that even the owner is filtered.
ALTER TABLE ledger.spans ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger.spans FORCE ROW LEVEL SECURITY;
CREATE POLICY spans_read ON ledger.spans FOR SELECT TO logline_app
    USING (ledger.visible(tenant_id, owner_id, visibility));
CREATE POLICY spans_write ON ledger.spans FOR INSERT TO logline_app
    WITH CHECK (tenant_id = ledger.current_tenant() AND owner_id = ledger.current_principal());
CREATE POLICY spans_audit ON ledger.spans FOR SELECT TO logline_auditor USING (true);

ALTER TABLE ledger.span_bodies ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger.span_bodies FORCE ROW LEVEL SECURITY;
CREATE POLICY bodies_read ON ledger.span_bodies FOR SELECT TO logline_app
    USING (ledger.visible(tenant_id, owner_id, visibility));
CREATE POLICY bodies_write ON ledger.span_bodies FOR INSERT TO logline_app
    WITH CHECK (tenant_id = ledger.current_tenant() AND owner_id = ledger.current_principal());
CREATE POLICY bodies_redact ON ledger.span_bodies FOR DELETE TO logline_app
    USING (tenant_id = ledger.current_tenant());
CREATE POLICY bodies_audit ON ledger.span_bodies FOR SELECT TO logline_auditor USING (true);

ALTER TABLE ledger.redactions ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger.redactions FORCE ROW LEVEL SECURITY;
CREATE POLICY redactions_read ON ledger.redactions FOR SELECT TO logline_app
    USING (tenant_id = ledger.current_tenant() OR visibility = 'public');
CREATE POLICY redactions_write ON ledger.redactions FOR INSERT TO logline_app
    WITH CHECK (tenant_id = ledger.current_tenant());
CREATE POLICY redactions_audit ON ledger.redactions FOR SELECT TO logline_auditor USING (true);

ALTER TABLE ledger.chain_heads ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger.chain_heads FORCE ROW LEVEL SECURITY;
CREATE POLICY chain_heads_tenant ON ledger.chain_heads FOR ALL TO logline_app
    USING (tenant_id = ledger.current_tenant()) WITH CHECK (tenant_id = ledger.current_tenant());
CREATE POLICY chain_heads_audit ON ledger.chain_heads FOR SELECT TO logline_auditor USING (true);

ALTER TABLE ledger.id_heads ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger.id_heads FORCE ROW LEVEL SECURITY;
CREATE POLICY id_heads_tenant ON ledger.id_heads FOR ALL TO logline_app
    USING (tenant_id = ledger.current_tenant()) WITH CHECK (tenant_id = ledger.current_tenant());

ALTER TABLE ledger.idempotency ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger.idempotency FORCE ROW LEVEL SECURITY;
CREATE POLICY idempotency_tenant ON ledger.idempotency FOR ALL TO logline_app
    USING (tenant_id = ledger.current_tenant()) WITH CHECK (tenant_id = ledger.current_tenant());

GRANT USAGE ON SCHEMA ledger TO logline_app, logline_auditor;
GRANT SELECT, INSERT ON ledger.spans, ledger.redactions, ledger.idempotency TO logline_app;
GRANT SELECT, INSERT, DELETE ON ledger.span_bodies TO logline_app;
GRANT SELECT, INSERT, UPDATE ON ledger.chain_heads, ledger.id_heads TO logline_app;
GRANT USAGE ON SEQUENCE ledger.spans_ingest_id_seq TO logline_app;
GRANT SELECT ON ledger.spans, ledger.span_bodies, ledger.redactions, ledger.chain_heads TO logline_auditor;
