-- Several nodes on one database (server/src/bus/postgres.rs).
-- Each live node, renewed by its heartbeat; deleted when it stops normally.
CREATE TABLE nodes (
    name         TEXT COLLATE "C" PRIMARY KEY,
    started_at   TIMESTAMPTZ NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL
);

-- Bodies of notifications too long for NOTIFY's 8000 bytes; the
-- notification carries the id. Deleted after ten minutes.
CREATE TABLE bus_payloads (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    body       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX bus_payloads_by_age ON bus_payloads (created_at);
