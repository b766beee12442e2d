-- Files Manager: the first schema. PostgreSQL holds the truth; Redis caches and queues from it.
-- Ids are UUIDs made by the database (gen_random_uuid, core since PG 13); times are timestamptz (UTC).
-- Later migrations add columns; the shapes and relations are settled here.

CREATE EXTENSION IF NOT EXISTS pg_trgm;   -- fuzzy name search (search issue)

CREATE TYPE user_role AS ENUM ('admin', 'member', 'viewer');

CREATE TABLE users (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email           text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    password_hash   text,                               -- argon2id PHC string; NULL for external-IdP users
    external_issuer text,                               -- set for users known through an external IdP token
    external_subject text,
    role            user_role NOT NULL DEFAULT 'member',
    display_name    text CHECK (length(display_name) <= 200),
    quota_bytes     bigint NOT NULL DEFAULT 10737418240 CHECK (quota_bytes >= 0),
    used_bytes      bigint NOT NULL DEFAULT 0 CHECK (used_bytes >= 0),
    disabled_at     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
-- Emails compare case-insensitively; lower() keeps this free of the citext extension.
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
CREATE UNIQUE INDEX users_external_key ON users (external_issuer, external_subject) WHERE external_issuer IS NOT NULL;
ALTER TABLE users ADD CONSTRAINT users_has_credential CHECK (password_hash IS NOT NULL OR external_issuer IS NOT NULL);

-- A session is one login on one device. Refresh tokens rotate inside a session (its "family"):
-- presenting a token that was already rotated away revokes the whole session (reuse detection).
CREATE TABLE sessions (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id         uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    revoked_at      timestamptz,
    revoked_reason  text CHECK (revoked_reason IN ('logout', 'reuse_detected', 'admin', 'expired', 'password_change')),
    user_agent      text CHECK (length(user_agent) <= 512),
    ip              inet
);
CREATE INDEX sessions_user_idx ON sessions (user_id) WHERE revoked_at IS NULL;

CREATE TABLE refresh_tokens (
    token_hash      bytea PRIMARY KEY CHECK (length(token_hash) = 32),  -- sha256 of the opaque token
    session_id      uuid NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    generation      integer NOT NULL,                                  -- 1, 2, 3 … within the session
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz,                                       -- set when rotated; a second use is reuse
    UNIQUE (session_id, generation)
);

-- API keys for programmatic clients (DESIGN §4): hashed, scoped.
CREATE TABLE api_keys (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id         uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    prefix          text NOT NULL UNIQUE,                 -- shown to the user to recognise the key
    key_hash        bytea NOT NULL CHECK (length(key_hash) = 32),
    scopes          text[] NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_used_at    timestamptz,
    expires_at      timestamptz,
    revoked_at      timestamptz
);

CREATE TABLE groups (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name            text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 100),
    created_by      uuid REFERENCES users(id) ON DELETE SET NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE group_members (
    group_id        uuid NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
    user_id         uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    added_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX group_members_user_idx ON group_members (user_id);

-- Verified content, one row per distinct sha256 (storage-level dedupe). A blob exists only once a worker
-- has hashed the bytes itself; claimed hashes live on uploads until then.
CREATE TABLE blobs (
    sha256          bytea PRIMARY KEY CHECK (length(sha256) = 32),
    size            bigint NOT NULL CHECK (size >= 0),
    storage_key     text NOT NULL UNIQUE,                -- object key in the bucket
    etag            text,
    content_type    text NOT NULL,                       -- sniffed by magic numbers, not the client's claim
    ref_count       integer NOT NULL DEFAULT 0 CHECK (ref_count >= 0),
    metadata        jsonb NOT NULL DEFAULT '{}',         -- dimensions, EXIF, page count …
    variants        jsonb NOT NULL DEFAULT '{}',         -- name → {key, width, height, format, size}
    extracted_text  text,
    verified_at     timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TYPE file_status AS ENUM ('PENDING_UPLOAD', 'UPLOADED', 'PROCESSING', 'READY', 'QUARANTINED', 'FAILED');

CREATE TABLE folders (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id        uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    parent_id       uuid REFERENCES folders(id) ON DELETE CASCADE,
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX folders_unique_name ON folders (owner_id, coalesce(parent_id, '00000000-0000-0000-0000-000000000000'::uuid), name);

CREATE TABLE files (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id        uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    folder_id       uuid REFERENCES folders(id) ON DELETE SET NULL,
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
    size            bigint NOT NULL CHECK (size >= 0),
    content_type    text NOT NULL,                       -- declared by the client
    claimed_sha256  bytea NOT NULL CHECK (length(claimed_sha256) = 32),
    blob_sha256     bytea REFERENCES blobs(sha256),      -- set once verified (or at once on dedupe)
    status          file_status NOT NULL DEFAULT 'PENDING_UPLOAD',
    status_reason   text,
    visibility      text NOT NULL DEFAULT 'private' CHECK (visibility IN ('private', 'public')),
    version         bigint NOT NULL DEFAULT 1,           -- bumped on every change (delta feed)
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz                          -- soft delete (trash), purged after retention
);
CREATE INDEX files_owner_created_idx ON files (owner_id, created_at DESC, id) WHERE deleted_at IS NULL;
CREATE INDEX files_owner_name_idx ON files (owner_id, name, id) WHERE deleted_at IS NULL;
CREATE INDEX files_owner_updated_idx ON files (owner_id, updated_at, id);
CREATE INDEX files_blob_idx ON files (blob_sha256);
CREATE INDEX files_name_trgm_idx ON files USING gin (name gin_trgm_ops);

CREATE TYPE upload_status AS ENUM ('PENDING', 'UPLOADED', 'COMPLETED', 'ABORTED', 'EXPIRED', 'FAILED');

CREATE TABLE uploads (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    file_id             uuid NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    owner_id            uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    object_key          text NOT NULL UNIQUE,            -- incoming/{id}, generated by the server
    size                bigint NOT NULL CHECK (size >= 0),
    content_type        text NOT NULL,
    claimed_sha256      bytea NOT NULL CHECK (length(claimed_sha256) = 32),
    method              text NOT NULL CHECK (method IN ('PUT', 'MULTIPART')),
    s3_upload_id        text,                            -- multipart only
    part_size           bigint,
    part_count          integer CHECK (part_count BETWEEN 1 AND 10000),
    status              upload_status NOT NULL DEFAULT 'PENDING',
    etag                text,
    expires_at          timestamptz NOT NULL,
    completed_at        timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX uploads_pending_idx ON uploads (expires_at) WHERE status = 'PENDING';

CREATE TYPE job_status AS ENUM ('QUEUED', 'RUNNING', 'RETRY', 'DONE', 'FAILED', 'DEAD');

CREATE TABLE jobs (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    type            text NOT NULL CHECK (type IN ('process_upload', 'cleanup_blob', 'purge_file', 'abort_multipart')),
    file_id         uuid REFERENCES files(id) ON DELETE SET NULL,
    upload_id       uuid REFERENCES uploads(id) ON DELETE SET NULL,
    dedupe_key      text UNIQUE,                         -- bucket+key+etag/sequencer: one job per object version
    status          job_status NOT NULL DEFAULT 'QUEUED',
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    payload         jsonb NOT NULL DEFAULT '{}',
    traceparent     text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz
);
CREATE INDEX jobs_status_idx ON jobs (status, created_at);

CREATE TABLE shares (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    file_id         uuid NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    created_by      uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_hash      bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    permission      text NOT NULL DEFAULT 'read' CHECK (permission IN ('read')),
    recipient_email text,
    password_hash   text,
    max_downloads   integer CHECK (max_downloads > 0),
    download_count  integer NOT NULL DEFAULT 0,
    expires_at      timestamptz,
    revoked_at      timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX shares_file_idx ON shares (file_id);

-- Per-file grants to a user or a group (RBAC beyond ownership).
CREATE TABLE grants (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    file_id         uuid NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    grantee_user_id uuid REFERENCES users(id) ON DELETE CASCADE,
    grantee_group_id uuid REFERENCES groups(id) ON DELETE CASCADE,
    permission      text NOT NULL CHECK (permission IN ('read', 'write')),
    granted_by      uuid REFERENCES users(id) ON DELETE SET NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((grantee_user_id IS NULL) <> (grantee_group_id IS NULL))
);
CREATE INDEX grants_file_idx ON grants (file_id);
CREATE INDEX grants_user_idx ON grants (grantee_user_id);
CREATE INDEX grants_group_idx ON grants (grantee_group_id);

-- Append-only, hash-chained: hash = sha256(prev_hash || canonical row). UPDATE and DELETE are refused.
CREATE TABLE audit_log (
    seq             bigserial PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now(),
    actor_id        uuid,
    action          text NOT NULL,
    target_type     text,
    target_id       text,
    ip              inet,
    request_id      text,
    detail          jsonb NOT NULL DEFAULT '{}',
    prev_hash       bytea,
    hash            bytea NOT NULL
);

CREATE FUNCTION audit_log_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    previous bytea;
BEGIN
    -- One writer at a time keeps the chain linear.
    PERFORM pg_advisory_xact_lock(7403110);
    SELECT hash INTO previous FROM audit_log ORDER BY seq DESC LIMIT 1;
    NEW.prev_hash := previous;
    NEW.hash := sha256(coalesce(previous, '\x'::bytea) || convert_to(
        concat_ws('|', NEW.seq, NEW.at, NEW.actor_id, NEW.action, NEW.target_type, NEW.target_id,
                  NEW.ip, NEW.request_id, NEW.detail::text), 'UTF8'));
    RETURN NEW;
END $$;
CREATE TRIGGER audit_log_chain BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION audit_log_chain();

CREATE FUNCTION audit_log_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END $$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log FOR EACH ROW EXECUTE FUNCTION audit_log_immutable();
