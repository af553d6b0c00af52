-- Registration and room-creation rate limits counted across every node
-- (server/src/rate_limit.rs): one GCRA cell per limit and key, its
-- theoretical arrival time. Rows whose time has passed are fully replenished
-- and deleted every minute.
CREATE TABLE rate_limits (
    kind TEXT COLLATE "C" NOT NULL,
    key  TEXT COLLATE "C" NOT NULL,
    tat  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX rate_limits_by_tat ON rate_limits (tat);
