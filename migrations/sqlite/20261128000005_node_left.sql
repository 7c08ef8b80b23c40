-- When a node's agent said it is shutting down (SIGTERM): the scheduler treats the node as lost
-- at its next pass, so its job is requeued at once instead of after node_timeout_secs.
ALTER TABLE nodes ADD COLUMN left_at BIGINT;
