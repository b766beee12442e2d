-- Uploads (issue 3): completing an upload and enqueueing its job happen in one statement, so a `complete` call
-- racing an S3 event (or duplicate events: RGW delivers at least once) can never make two jobs.

ALTER TABLE uploads ADD COLUMN completed_by text CHECK (completed_by IN ('complete', 'event', 'reconciler'));
ALTER TABLE uploads ADD COLUMN status_reason text;
ALTER TABLE uploads ADD COLUMN checked_at timestamptz;     -- last time the reconciler looked for its object
ALTER TABLE jobs ADD COLUMN enqueued_at timestamptz;       -- set once the job is on the Redis stream
CREATE INDEX jobs_not_enqueued_idx ON jobs (created_at) WHERE enqueued_at IS NULL AND status = 'QUEUED';
CREATE INDEX uploads_owner_idx ON uploads (owner_id, created_at DESC);

-- Marks an upload UPLOADED (its object is in the bucket, with `p_size` bytes) and creates its processing job.
-- outcome: 'uploaded' (this call did it; job_id is new), 'already' (done before; job_id is the existing one),
--          'size_mismatch' (the object has another size: upload and file FAILED), 'not_pending' (aborted/expired),
--          'unknown' (no such upload).
CREATE FUNCTION fm_upload_mark_uploaded(p_upload_id uuid, p_size bigint, p_etag text, p_by text, p_bucket text)
RETURNS TABLE (outcome text, job_id uuid, file_id uuid, owner_id uuid)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    u uploads;
    j uuid;
BEGIN
    SELECT * INTO u FROM uploads WHERE id = p_upload_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'unknown', NULL::uuid, NULL::uuid, NULL::uuid;
        RETURN;
    END IF;
    IF u.status IN ('UPLOADED', 'COMPLETED') THEN
        SELECT id INTO j FROM jobs WHERE dedupe_key = 'upload:' || u.id::text;
        RETURN QUERY SELECT 'already', j, u.file_id, u.owner_id;
        RETURN;
    END IF;
    IF u.status <> 'PENDING' THEN
        RETURN QUERY SELECT 'not_pending', NULL::uuid, u.file_id, u.owner_id;
        RETURN;
    END IF;
    IF p_size IS NOT NULL AND p_size <> u.size THEN
        UPDATE uploads SET status = 'FAILED', status_reason = 'size_mismatch', completed_by = p_by
            WHERE id = u.id;
        UPDATE files SET status = 'FAILED', status_reason = 'size_mismatch', updated_at = now(), version = version + 1
            WHERE id = u.file_id;
        RETURN QUERY SELECT 'size_mismatch', NULL::uuid, u.file_id, u.owner_id;
        RETURN;
    END IF;
    UPDATE uploads SET status = 'UPLOADED', etag = p_etag, completed_at = now(), completed_by = p_by WHERE id = u.id;
    UPDATE files SET status = 'UPLOADED', updated_at = now(), version = version + 1 WHERE id = u.file_id;
    INSERT INTO jobs (type, file_id, upload_id, dedupe_key, payload)
        VALUES ('process_upload', u.file_id, u.id, 'upload:' || u.id::text,
                jsonb_build_object('bucket', p_bucket, 'key', u.object_key, 'etag', p_etag, 'size', u.size,
                                   'content_type', u.content_type, 'sha256', encode(u.claimed_sha256, 'hex'),
                                   'owner_id', u.owner_id))
        RETURNING id INTO j;
    RETURN QUERY SELECT 'uploaded', j, u.file_id, u.owner_id;
END $$;
