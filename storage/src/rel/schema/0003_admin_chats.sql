-- chatrelay's relational schema, version 3: what the admin paths and the web chats need.
-- Never edit a shipped migration: add the next file.

-- `users_created_since` (the per-day figures) reads the users of a period, not every user.
CREATE INDEX users_created_at ON users (created_at_ms);

-- Prefix scans of checkpoints and statistics (`LIKE 'prefix%'`), whatever the collation.
CREATE INDEX checkpoints_key_pattern ON checkpoints (key text_pattern_ops);
CREATE INDEX stats_key_pattern ON stats (key text_pattern_ops);
