-- missive's mail queue, version 3. Bodies are compressed with LZ4 where the server
-- has it (PostgreSQL 14 and later built with lz4, as Debian's and the official images
-- are): a fraction of pglz's CPU, and about two fifths of the bytes to write, log and
-- read back. A server without it keeps version 2's uncompressed storage. Rows written
-- before keep their storage; every body reads back the same.
DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 140000
       AND EXISTS (SELECT 1 FROM pg_settings
                   WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals))
    THEN
        ALTER TABLE missive_messages ALTER COLUMN raw SET STORAGE EXTENDED;
        ALTER TABLE missive_messages ALTER COLUMN raw SET COMPRESSION lz4;
    END IF;
END
$$;
