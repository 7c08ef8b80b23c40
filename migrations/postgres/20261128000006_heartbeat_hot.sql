-- A heartbeat writes only `last_seen`. Unindexed, and with room left on each page, that write
-- is a heap-only (HOT) update that touches none of the table's indexes. The index served no
-- query: the search for lost nodes also takes nodes that left, and scans the (small) table.
DROP INDEX nodes_last_seen;
ALTER TABLE nodes SET (fillfactor = 50);
