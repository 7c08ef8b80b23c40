-- Control-plane schema. Times are epoch milliseconds (BIGINT) and JSON is TEXT so that the
-- Postgres and SQLite stores share every statement but a few locking clauses.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE subscriptions (
    id           TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);

CREATE TABLE provider_registrations (
    subscription_id TEXT NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    namespace_key   TEXT NOT NULL,
    state           TEXT NOT NULL,
    CONSTRAINT provider_registrations_pkey PRIMARY KEY (subscription_id, namespace_key)
);

CREATE TABLE principals (
    client_id     TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    secret_hash   TEXT NOT NULL,
    subscriptions TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);

CREATE TABLE api_tokens (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    token_hash    TEXT NOT NULL CONSTRAINT api_tokens_hash_key UNIQUE,
    subscriptions TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT,
    revoked_at    BIGINT
);

-- Every ARM resource (resource groups and the Batch AI hierarchy). `key` is the case-folded
-- ARM id; `arm_id` keeps the spelling the client used.
CREATE TABLE resources (
    key                     TEXT PRIMARY KEY,
    kind                    TEXT NOT NULL,
    subscription_id         TEXT NOT NULL,
    rg_key                  TEXT NOT NULL,
    ws_key                  TEXT NOT NULL,
    exp_key                 TEXT NOT NULL,
    parent_key              TEXT NOT NULL,
    arm_id                  TEXT NOT NULL,
    name                    TEXT NOT NULL,
    uid                     TEXT NOT NULL,
    location                TEXT,
    tags                    TEXT,
    spec                    TEXT,
    provisioning_state      TEXT NOT NULL,
    provisioning_changed_at BIGINT NOT NULL,
    created_at              BIGINT NOT NULL
);
CREATE INDEX resources_parent ON resources (parent_key, kind, key);
CREATE INDEX resources_subscription ON resources (subscription_id, kind, key);
CREATE INDEX resources_group ON resources (subscription_id, rg_key, kind, key);

-- Runtime state of jobs, moved by the scheduler and agents.
CREATE TABLE jobs (
    key                    TEXT PRIMARY KEY REFERENCES resources (key) ON DELETE CASCADE,
    cluster_key            TEXT NOT NULL,
    priority               INTEGER NOT NULL,
    node_count             INTEGER NOT NULL,
    tool_type              TEXT NOT NULL,
    max_wall_clock_secs    BIGINT NOT NULL,
    execution_state        TEXT NOT NULL,
    execution_changed_at   BIGINT NOT NULL,
    start_time             BIGINT,
    end_time               BIGINT,
    exit_code              INTEGER,
    errors                 TEXT,
    created_at             BIGINT NOT NULL
);
CREATE INDEX jobs_queue ON jobs (cluster_key, execution_state, priority DESC, created_at, key);

-- Runtime state of clusters.
CREATE TABLE clusters (
    key                    TEXT PRIMARY KEY REFERENCES resources (key) ON DELETE CASCADE,
    vm_size                TEXT NOT NULL,
    allocation_state       TEXT NOT NULL,
    allocation_changed_at  BIGINT NOT NULL,
    current_node_count     INTEGER NOT NULL DEFAULT 0,
    idle_node_count        INTEGER NOT NULL DEFAULT 0,
    running_node_count     INTEGER NOT NULL DEFAULT 0,
    preparing_node_count   INTEGER NOT NULL DEFAULT 0,
    unusable_node_count    INTEGER NOT NULL DEFAULT 0,
    leaving_node_count     INTEGER NOT NULL DEFAULT 0,
    errors                 TEXT
);

-- Long-running operations: durable, leased by whichever server runs them.
CREATE TABLE operations (
    id              TEXT PRIMARY KEY,
    subscription_id TEXT NOT NULL,
    location        TEXT NOT NULL,
    kind            TEXT NOT NULL,
    resource_kind   TEXT NOT NULL,
    resource_key    TEXT NOT NULL,
    resource_id     TEXT NOT NULL,
    dollar_id       TEXT NOT NULL,
    status          TEXT NOT NULL,
    error_code      TEXT,
    error_message   TEXT,
    started_at      BIGINT NOT NULL,
    ended_at        BIGINT,
    run_after       BIGINT NOT NULL,
    lease_until     BIGINT NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX operations_due ON operations (status, run_after);
