-- Workers (issue 4): the job transitions of fm-worker (lambda-workers/process.c) and of the admin retry
-- (control-plane/admin.c), each one statement so a job is never half-marked. Every worker transition only acts on a
-- RUNNING job (the worker holds its lock), and answers no row when the job was not in that state.

CREATE INDEX jobs_attention_idx ON jobs (created_at DESC) WHERE status IN ('FAILED', 'RETRY');

-- The verified blob registered (or found: storage-level dedupe), the file READY on it, the job DONE, the upload
-- COMPLETED. out_created is false when a blob with this sha256 existed already: the caller then deletes its own
-- duplicate object (the file points at out_key, the existing blob's object).
CREATE FUNCTION fm_job_ready(p_job uuid, p_sha256 text, p_size bigint, p_key text, p_etag text, p_type text,
                             p_metadata jsonb, p_variants jsonb, p_text text)
RETURNS TABLE (out_created boolean, out_key text, out_owner uuid)
LANGUAGE plpgsql AS $$
DECLARE
    j jobs;
    k text;
    made boolean;
    o uuid;
BEGIN
    SELECT * INTO j FROM jobs WHERE id = p_job FOR UPDATE;
    IF NOT FOUND OR j.status <> 'RUNNING' THEN
        RETURN;
    END IF;
    INSERT INTO blobs (sha256, size, storage_key, etag, content_type, ref_count, metadata, variants, extracted_text)
        VALUES (decode(p_sha256, 'hex'), p_size, p_key, p_etag, p_type, 1, coalesce(p_metadata, '{}'),
                coalesce(p_variants, '{}'), p_text)
        ON CONFLICT (sha256) DO NOTHING
        RETURNING storage_key INTO k;
    made := k IS NOT NULL;
    IF NOT made THEN
        SELECT b.storage_key INTO k FROM blobs b WHERE b.sha256 = decode(p_sha256, 'hex');
    END IF;
    UPDATE files SET status = 'READY', blob_sha256 = decode(p_sha256, 'hex'), status_reason = NULL,
                     updated_at = now(), version = version + 1
        WHERE id = j.file_id RETURNING owner_id INTO o;
    UPDATE jobs SET status = 'DONE', finished_at = now(), last_error = NULL WHERE id = p_job;
    UPDATE uploads SET status = 'COMPLETED' WHERE id = j.upload_id AND status = 'UPLOADED';
    RETURN QUERY SELECT made, k, o;
END $$;

-- Refused content: the file QUARANTINED with the reason, the job DONE (the reason kept in last_error). The upload is
-- COMPLETED (its bytes did arrive), never FAILED: the reconciler deletes the objects of FAILED uploads.
CREATE FUNCTION fm_job_quarantine(p_job uuid, p_reason text)
RETURNS TABLE (out_owner uuid)
LANGUAGE plpgsql AS $$
DECLARE
    j jobs;
    o uuid;
BEGIN
    SELECT * INTO j FROM jobs WHERE id = p_job FOR UPDATE;
    IF NOT FOUND OR j.status <> 'RUNNING' THEN
        RETURN;
    END IF;
    UPDATE files SET status = 'QUARANTINED', status_reason = p_reason, updated_at = now(), version = version + 1
        WHERE id = j.file_id RETURNING owner_id INTO o;
    UPDATE jobs SET status = 'DONE', finished_at = now(), last_error = p_reason WHERE id = p_job;
    UPDATE uploads SET status = 'COMPLETED' WHERE id = j.upload_id AND status = 'UPLOADED';
    RETURN QUERY SELECT o;
END $$;

-- A failed attempt: p_final false → job RETRY (the caller puts it on the delayed set), file back to UPLOADED;
-- p_final true → job FAILED and file FAILED, the reason kept on both. The upload stays UPLOADED (its object is
-- kept for an admin retry).
CREATE FUNCTION fm_job_attempt_failed(p_job uuid, p_reason text, p_final boolean)
RETURNS TABLE (out_owner uuid, out_type text, out_file uuid, out_upload uuid)
LANGUAGE plpgsql AS $$
DECLARE
    j jobs;
    o uuid;
BEGIN
    SELECT * INTO j FROM jobs WHERE id = p_job FOR UPDATE;
    IF NOT FOUND OR j.status <> 'RUNNING' THEN
        RETURN;
    END IF;
    IF p_final THEN
        UPDATE files SET status = 'FAILED', status_reason = p_reason, updated_at = now(), version = version + 1
            WHERE id = j.file_id RETURNING owner_id INTO o;
        UPDATE jobs SET status = 'FAILED', finished_at = now(), last_error = p_reason WHERE id = p_job;
    ELSE
        UPDATE files SET status = 'UPLOADED', status_reason = NULL, updated_at = now(), version = version + 1
            WHERE id = j.file_id RETURNING owner_id INTO o;
        UPDATE jobs SET status = 'RETRY', last_error = p_reason WHERE id = p_job;
    END IF;
    RETURN QUERY SELECT o, j.type, j.file_id, j.upload_id;
END $$;

-- POST /v1/admin/jobs/{id}/retry: a FAILED job gets a fresh set of attempts. outcome 'requeued' (the caller puts it
-- on the stream; enqueued_at is cleared so the reconciler adds it if that XADD is lost), 'not_failed' or 'unknown'.
-- The last error moves to payload.previous_error.
CREATE FUNCTION fm_job_requeue(p_job uuid)
RETURNS TABLE (outcome text, out_type text, out_file uuid, out_upload uuid, out_owner uuid)
LANGUAGE plpgsql AS $$
DECLARE
    j jobs;
    o uuid;
BEGIN
    SELECT * INTO j FROM jobs WHERE id = p_job FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'unknown', NULL::text, NULL::uuid, NULL::uuid, NULL::uuid;
        RETURN;
    END IF;
    IF j.status <> 'FAILED' THEN
        RETURN QUERY SELECT 'not_failed', j.type, j.file_id, j.upload_id, NULL::uuid;
        RETURN;
    END IF;
    UPDATE jobs SET status = 'QUEUED', attempts = 0, last_error = NULL, started_at = NULL, finished_at = NULL,
                    enqueued_at = NULL,
                    payload = payload || jsonb_build_object('previous_error', j.last_error, 'retried_at', now())
        WHERE id = p_job;
    UPDATE files SET status = 'UPLOADED', status_reason = NULL, updated_at = now(), version = version + 1
        WHERE id = j.file_id RETURNING owner_id INTO o;
    RETURN QUERY SELECT 'requeued', j.type, j.file_id, j.upload_id, o;
END $$;
