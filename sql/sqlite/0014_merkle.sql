-- RFC 9162 Merkle trees over each tenant chain (see ledger/src/merkle.rs). Derived data,
-- rebuildable from spans.curr_hash; kept so that proofs and checkpoints cost a few reads.
--
-- The compact range of each tenant's tree: `size` leaves (chain positions 0..size) and the
-- roots of its maximal complete subtrees, 32 bytes each, largest first.
CREATE TABLE merkle_heads (
    tenant_id TEXT    PRIMARY KEY,
    size      INTEGER NOT NULL CHECK (size >= 0),
    peaks     BLOB    NOT NULL
);
-- Complete subtrees of 16 leaves and more: leaves idx << level .. (idx + 1) << level. Smaller
-- ones are hashed from the spans when a proof needs them.
CREATE TABLE merkle_nodes (
    tenant_id TEXT    NOT NULL,
    level     INTEGER NOT NULL,
    idx       INTEGER NOT NULL,
    hash      BLOB    NOT NULL,
    PRIMARY KEY (tenant_id, level, idx)
) WITHOUT ROWID;
-- A complete subtree never changes once its leaves exist.
CREATE TRIGGER merkle_nodes_no_update BEFORE UPDATE ON merkle_nodes
BEGIN SELECT RAISE(ABORT, 'merkle nodes are append-only'); END;
CREATE TRIGGER merkle_nodes_no_delete BEFORE DELETE ON merkle_nodes
BEGIN SELECT RAISE(ABORT, 'merkle nodes are append-only'); END;
