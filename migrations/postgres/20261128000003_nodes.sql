-- Node agents, their join tokens, and which nodes run which job.

CREATE TABLE join_tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    token_hash  TEXT NOT NULL CONSTRAINT join_tokens_hash_key UNIQUE,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    revoked_at  BIGINT
);

-- One row per registered node. `state` follows core's NodeState; `alloc_epoch` grows each
-- time the node is given to a cluster and `job_epoch` is the epoch of the job placement it
-- holds, so reports about an older allocation or placement are ignored.
CREATE TABLE nodes (
    id               TEXT PRIMARY KEY,
    credential_hash  TEXT NOT NULL CONSTRAINT nodes_credential_key UNIQUE,
    hostname         TEXT NOT NULL,
    address          TEXT NOT NULL,
    ssh_port         INTEGER NOT NULL,
    gpus             INTEGER NOT NULL,
    facts            TEXT NOT NULL,
    state            TEXT NOT NULL,
    cluster_key      TEXT,
    alloc_epoch      BIGINT NOT NULL DEFAULT 0,
    job_key          TEXT,
    job_epoch        BIGINT,
    error            TEXT,
    lost_at          BIGINT,
    last_seen        BIGINT NOT NULL,
    joined_at        BIGINT NOT NULL,
    changed_at       BIGINT NOT NULL
);
CREATE INDEX nodes_cluster ON nodes (cluster_key, state);
CREATE INDEX nodes_pool ON nodes (state, id) WHERE cluster_key IS NULL;
CREATE INDEX nodes_job ON nodes (job_key) WHERE job_key IS NOT NULL;
CREATE INDEX nodes_changed ON nodes (changed_at);
CREATE INDEX nodes_last_seen ON nodes (last_seen);

-- The VM sizes a node serves (lower case; '*' serves all).
CREATE TABLE node_sizes (
    node_id  TEXT NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    vm_size  TEXT NOT NULL,
    CONSTRAINT node_sizes_pkey PRIMARY KEY (vm_size, node_id)
);

-- The nodes of a job's placement (one epoch per placement; a requeued job is placed anew).
CREATE TABLE job_nodes (
    job_key        TEXT NOT NULL REFERENCES jobs (key) ON DELETE CASCADE,
    epoch          BIGINT NOT NULL,
    rank           INTEGER NOT NULL,
    node_id        TEXT NOT NULL,
    phase          TEXT NOT NULL,
    exit_code      INTEGER,
    error_code     TEXT,
    error_message  TEXT,
    CONSTRAINT job_nodes_pkey PRIMARY KEY (job_key, epoch, rank)
);

ALTER TABLE jobs ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN requeues INTEGER NOT NULL DEFAULT 0;
CREATE INDEX jobs_active ON jobs (cluster_key, execution_state) WHERE execution_state IN ('running', 'terminating');
