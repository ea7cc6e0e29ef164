-- chatrelay's relational schema, version 3: what the admin paths and the web chats need.
-- Never edit a shipped migration: add the next file.

-- `users_created_since` (the per-day figures) reads the users of a period, not every user.
CREATE INDEX users_created_at ON users (created_at_ms);

-- Prefix scans of checkpoints and statistics (`LIKE 'prefix%'`), whatever the collation.
CREATE INDEX checkpoints_key_pattern ON checkpoints (key text_pattern_ops);
CREATE INDEX stats_key_pattern ON stats (key text_pattern_ops);

-- The web page's saved conversations (`chats.rs`): one row each, its messages a JSON array
-- of {role, content, at_ms?, model?} (saved and read whole; `jsonb_array_elements` reads
-- them with SQL). `updated_at_ms` is also its version: every change raises it.
CREATE TABLE chats (
    uid bigint NOT NULL REFERENCES users (uid),
    id text NOT NULL CHECK (id ~ '^[A-Za-z0-9_.:-]{1,80}$'),
    title text NOT NULL CHECK (octet_length(title) <= 1024),
    updated_at_ms bigint NOT NULL,
    message_count bigint NOT NULL CHECK (message_count >= 0),
    bytes bigint NOT NULL CHECK (bytes >= 0),
    messages jsonb NOT NULL CHECK (jsonb_typeof(messages) = 'array'),
    PRIMARY KEY (uid, id)
);
-- The least recently updated of a user's go first when over the count.
CREATE INDEX chats_by_age ON chats (uid, updated_at_ms);
