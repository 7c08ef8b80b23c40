-- A heartbeat writes only `last_seen`; the index on it served no query (the search for lost
-- nodes also takes nodes that left, and scans the small table) and cost every heartbeat a
-- write. (Postgres also leaves room on each page there, for heap-only updates.)
DROP INDEX nodes_last_seen;
