-- Version 2: each room numbers its messages 1, 2, 3... (`seq`), the one order
-- of live delivery and history.
ALTER TABLE messages ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
UPDATE messages SET seq = (
    SELECT COUNT(*) FROM messages AS earlier
    WHERE earlier.room_code = messages.room_code AND earlier.id <= messages.id
);
CREATE UNIQUE INDEX messages_by_room_seq ON messages (room_code, seq);
DROP INDEX messages_by_room;
