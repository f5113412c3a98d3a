-- missive's mail queue, version 2. A message body (tens of KB) was compressed with
-- pglz on every enqueue, which cost the server more CPU than the rest of the insert;
-- stored out of line uncompressed it costs a copy. Rows written before keep their
-- compressed bodies, which read back the same.
ALTER TABLE missive_messages ALTER COLUMN raw SET STORAGE EXTERNAL;
