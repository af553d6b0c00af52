-- Login throttling counted across every node (server/src/auth/throttle.rs,
-- PROTOCOL.md login row). Rows older than their window are deleted.
-- Attempts per client address (an IPv4 address or an IPv6 /64).
CREATE TABLE login_attempts (
    address TEXT COLLATE "C" NOT NULL,
    at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX login_attempts_by_address ON login_attempts (address, at);
CREATE INDEX login_attempts_by_age ON login_attempts (at);

-- Failed logins per email (trimmed, lower-cased).
CREATE TABLE login_failures (
    email TEXT COLLATE "C" NOT NULL,
    at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX login_failures_by_email ON login_failures (email, at);
CREATE INDEX login_failures_by_age ON login_failures (at);
