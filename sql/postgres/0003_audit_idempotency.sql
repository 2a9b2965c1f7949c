-- `verify` checks the idempotency keys against the spans they point at (a tampered key would let
-- a retry take effect twice), so the auditor reads them too.
GRANT SELECT ON ledger.idempotency TO logline_auditor;
CREATE POLICY idempotency_audit ON ledger.idempotency FOR SELECT TO logline_auditor USING (true);
