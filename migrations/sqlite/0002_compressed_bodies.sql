-- missive's mail queue, version 2: bodies stored compressed.

-- How `raw` is stored: 'lz4' is an LZ4 block (the format of lz4_flex and of LZ4's
-- LZ4_compress_default) after the message's length as four bytes, little-endian; NULL
-- is the message's bytes as they are (rows from version 1, and messages that LZ4 does
-- not make smaller). Most mail shrinks to a third, which is two thirds fewer pages for
-- each commit and each checkpoint to write.
ALTER TABLE missive_bodies ADD COLUMN compression TEXT;
