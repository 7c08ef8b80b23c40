-- Only unfinished operations are ever claimed, and most operations (creates) are recorded
-- already finished: index just the unfinished ones, so finished rows cost no index upkeep.
DROP INDEX operations_due;
CREATE INDEX operations_due ON operations (run_after) WHERE status = 'InProgress';
