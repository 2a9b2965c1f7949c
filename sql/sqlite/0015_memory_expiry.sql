-- The memory expiry sweeper (issue 13) looks items up by ttl_at.
CREATE INDEX IF NOT EXISTS memory_items_ttl ON memory_items (ttl_at) WHERE ttl_at IS NOT NULL;
