-- Each node's part of the rooms' presence (server/src/bus/postgres.rs): one
-- row per room and member with a socket in it on that node. A node that
-- (re)starts listening reads the others' rows; a node's rows go with it.
CREATE TABLE presence (
    node   TEXT COLLATE "C" NOT NULL REFERENCES nodes (name) ON DELETE CASCADE,
    room   TEXT COLLATE "C" NOT NULL,
    key    TEXT COLLATE "C" NOT NULL,
    -- The member as JSON: {"key","id","name"} (PROTOCOL.md "presence").
    member TEXT NOT NULL,
    PRIMARY KEY (node, room, key)
);
