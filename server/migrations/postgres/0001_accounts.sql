-- Users, their login sessions, single-use socket tickets, and the secrets every
-- node of the cluster shares. Same columns and meanings as migrations/sqlite;
-- text that is sorted or compared byte for byte is COLLATE "C", as in SQLite.
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL,
    -- lower-cased email: emails are compared without regard to case
    email_key     TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('user', 'admin')),
    created_at    TEXT COLLATE "C" NOT NULL
);

CREATE TABLE sessions (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at TEXT COLLATE "C" NOT NULL,
    -- unix seconds, the same instant as the JWT's exp
    expires_at BIGINT NOT NULL,
    revoked_at TEXT
);
CREATE INDEX sessions_by_user ON sessions (user_id);

CREATE TABLE socket_tickets (
    ticket     TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    -- unix seconds
    expires_at BIGINT NOT NULL
);
CREATE INDEX socket_tickets_by_expiry ON socket_tickets (expires_at);

-- The generated JWT secret (name 'jwt') when TETHER_JWT_SECRET is unset: the
-- first node to start stores it, every node reads it.
CREATE TABLE server_secrets (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
