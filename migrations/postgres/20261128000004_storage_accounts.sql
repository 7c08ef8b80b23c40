-- Storage accounts the server stands in for, and on-prem NFS servers declared by the operator.

-- `name` is the lower-case account name. `key_cipher` is the account key as the server
-- encrypted it: the store never sees the key itself.
CREATE TABLE storage_accounts (
    name            TEXT PRIMARY KEY,
    key_cipher      TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    key_rotated_at  BIGINT NOT NULL
);

-- `name` is lower case; `export` is what a node mounts, e.g. "nfs-host:/export/path".
CREATE TABLE file_servers (
    name           TEXT PRIMARY KEY,
    export         TEXT NOT NULL,
    mount_options  TEXT NOT NULL DEFAULT '',
    created_at     BIGINT NOT NULL
);
