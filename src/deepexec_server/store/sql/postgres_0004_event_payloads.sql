-- Messages between processes (store/pg_notify.py) too big for a NOTIFY payload (8,000 bytes):
-- written here, the notification carrying the row id; deleted after a few minutes.
CREATE TABLE IF NOT EXISTS event_payloads (
    id bigserial PRIMARY KEY,
    body text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS event_payloads_created_at ON event_payloads (created_at);
