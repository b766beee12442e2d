-- Verified bytes live where no client URL can write (issue 10 finding 1; DESIGN.md §6 rule 1; docs/workers.md
-- "Where verified bytes live"). Until now a blob kept the key of the upload that first brought its bytes,
-- incoming/{upload_id}, which that upload's presigned PUT could overwrite after the worker had hashed it. The worker now
-- copies the client's object to staging/{upload_id} (no presigned URL names it), checks that copy, and copies it to
-- the content-addressed blobs/{sha256}, the blob's storage_key.
--
-- fm_job_ready as in 004, with one change: a blob registered by an earlier version (its storage_key is not under
-- blobs/) takes the new job's verified copy as its object, and the old key is returned (out_old_key) for the caller to
-- delete. A blob already under blobs/ keeps its key (same sha256, same bytes).
DROP FUNCTION fm_job_ready(uuid, text, bigint, text, text, text, jsonb, jsonb, text);

CREATE FUNCTION fm_job_ready(p_job uuid, p_sha256 text, p_size bigint, p_key text, p_etag text, p_type text,
                             p_metadata jsonb, p_variants jsonb, p_text text)
RETURNS TABLE (out_created boolean, out_key text, out_owner uuid, out_old_key text)
LANGUAGE plpgsql AS $$
DECLARE
    j jobs;
    k text;
    old_key text;
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
        SELECT b.storage_key INTO old_key FROM blobs b WHERE b.sha256 = decode(p_sha256, 'hex') FOR NO KEY UPDATE;
        IF old_key NOT LIKE 'blobs/%' AND p_key LIKE 'blobs/%' THEN
            UPDATE blobs SET storage_key = p_key, etag = coalesce(p_etag, etag)
                WHERE sha256 = decode(p_sha256, 'hex');
            k := p_key;
        ELSE
            k := old_key;
            old_key := NULL;
        END IF;
    END IF;
    UPDATE files SET status = 'READY', blob_sha256 = decode(p_sha256, 'hex'), status_reason = NULL,
                     updated_at = now(), version = version + 1
        WHERE id = j.file_id RETURNING owner_id INTO o;
    UPDATE jobs SET status = 'DONE', finished_at = now(), last_error = NULL WHERE id = p_job;
    UPDATE uploads SET status = 'COMPLETED' WHERE id = j.upload_id AND status = 'UPLOADED';
    RETURN QUERY SELECT made, k, o, old_key;
END $$;

-- Blobs of an earlier version still at their first upload's key are moved by rekey_blob jobs (lambda-workers/rekey.c):
-- the old object copied to staging/, hashed, and copied to blobs/{sha256} when it still has the verified bytes (the
-- blob's READY files are QUARANTINED when it does not).
ALTER TABLE jobs DROP CONSTRAINT jobs_type_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_type_check
    CHECK (type IN ('process_upload', 'cleanup_blob', 'purge_file', 'abort_multipart', 'purge_edge', 'rekey_blob'));
CREATE INDEX blobs_old_key_idx ON blobs (created_at) WHERE storage_key NOT LIKE 'blobs/%';

-- One round of the housekeeping scan: a rekey_blob job per blob not under blobs/ (oldest first, at most p_limit), the
-- ids the caller puts on the stream. A job already made is not made again, but for one whose stream entry was made
-- over an hour ago and is still QUEUED (lost with Redis' data) and one that FAILED over an hour ago; a DONE job (moved,
-- replaced, or its object missing) is final.
CREATE FUNCTION fm_rekey_scan(p_limit integer)
RETURNS TABLE (out_job uuid)
LANGUAGE sql AS $$
    INSERT INTO jobs AS j (type, dedupe_key, payload)
        SELECT 'rekey_blob', 'rekey_blob:' || encode(b.sha256, 'hex'),
               jsonb_build_object('sha256', encode(b.sha256, 'hex'), 'key', b.storage_key)
        FROM blobs b WHERE b.storage_key NOT LIKE 'blobs/%'
        ORDER BY b.created_at LIMIT p_limit
    ON CONFLICT (dedupe_key) DO UPDATE
        SET status = 'QUEUED', attempts = 0, last_error = NULL, started_at = NULL, finished_at = NULL,
            enqueued_at = NULL, created_at = now(), payload = EXCLUDED.payload
        WHERE (j.status = 'FAILED' AND j.finished_at < now() - interval '1 hour')
           OR (j.status = 'QUEUED' AND j.enqueued_at < now() - interval '1 hour')
    RETURNING j.id
$$;
