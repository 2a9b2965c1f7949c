-- Recall speed (issue 13 §7): how many items of a tenant hold each keyed term, so recall can
-- leave out terms so common that ranking every item holding them would cost more than it tells
-- (`note`, `user`: the lowest-IDF words there are). Kept by statement triggers on the index
-- table, so it follows remembering and forgetting (the redaction trigger's DELETE) in the same
-- transaction; a term's row goes when its last item does.
CREATE TABLE ledger.memory_terms (
    tenant_id text   NOT NULL,
    term      text   NOT NULL,
    items     bigint NOT NULL,
    PRIMARY KEY (tenant_id, term)
);

INSERT INTO ledger.memory_terms (tenant_id, term, items)
SELECT m.tenant_id, t.lexeme, count(*) FROM ledger.memory_items m, unnest(m.terms) t GROUP BY 1, 2;

CREATE FUNCTION ledger.memory_terms_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger.memory_terms (tenant_id, term, items)
    SELECT n.tenant_id, t.lexeme, count(*) FROM added n, unnest(n.terms) t GROUP BY 1, 2
    ON CONFLICT (tenant_id, term) DO UPDATE SET items = ledger.memory_terms.items + EXCLUDED.items;
    RETURN NULL;
END $$;
CREATE TRIGGER memory_items_terms_added AFTER INSERT ON ledger.memory_items
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION ledger.memory_terms_added();

-- Counts never go below zero: a count that drifted must not make forgetting fail.
CREATE FUNCTION ledger.memory_terms_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE ledger.memory_terms c SET items = greatest(c.items - gone.n, 0)
    FROM (SELECT o.tenant_id, t.lexeme AS term, count(*) AS n
          FROM removed o, unnest(o.terms) t GROUP BY 1, 2) gone
    WHERE c.tenant_id = gone.tenant_id AND c.term = gone.term;
    DELETE FROM ledger.memory_terms c
    WHERE c.items = 0
      AND (c.tenant_id, c.term) IN (SELECT o.tenant_id, t.lexeme FROM removed o, unnest(o.terms) t);
    RETURN NULL;
END $$;
CREATE TRIGGER memory_items_terms_removed AFTER DELETE ON ledger.memory_items
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION ledger.memory_terms_removed();

ALTER TABLE ledger.memory_terms ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger.memory_terms FORCE ROW LEVEL SECURITY;
CREATE POLICY memory_terms_tenant ON ledger.memory_terms FOR ALL TO logline_app
    USING (tenant_id = ledger.current_tenant()) WITH CHECK (tenant_id = ledger.current_tenant());
GRANT SELECT, INSERT, UPDATE, DELETE ON ledger.memory_terms TO logline_app;

-- Recall's scope is three arms (public items, the tenant's shared ones, the caller's own); with
-- an index for each, a user with few items in a large tenant is found by index, not by a scan
-- of every item (the owner arm uses memory_items_owner).
CREATE INDEX memory_items_shared ON ledger.memory_items (tenant_id) WHERE visibility = 'tenant';
CREATE INDEX memory_items_public ON ledger.memory_items (id) WHERE visibility = 'public';

-- The full-text match of recall. Under row level security PostgreSQL will not evaluate `@@`
-- (not leakproof) inside an index scan ahead of the policy, so the GIN index was never used and
-- every recall scanned the tenant. This function runs as its owner, applies the very policy
-- expression (`ledger.visible`) after the GIN lookup, and returns only ids; the caller's query
-- then reads those rows under row level security and its scope as before.
CREATE FUNCTION ledger.memory_term_hits(q tsquery) RETURNS SETOF uuid
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, ledger
    -- Materialized, so that the planner looks up the terms in GIN instead of walking the
    -- policy's index arms (which hold every item of a large owner).
    AS $$ WITH h AS MATERIALIZED (
              SELECT m.id, m.tenant_id, m.owner_id, m.visibility FROM ledger.memory_items m
              WHERE m.terms @@ q)
          SELECT h.id FROM h WHERE ledger.visible(h.tenant_id, h.owner_id, h.visibility) $$;
REVOKE ALL ON FUNCTION ledger.memory_term_hits(tsquery) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ledger.memory_term_hits(tsquery) TO logline_app;
