-- The reconciler follows the objects that exist (issue 10, "accepted uploads must never be lost"): it lists
-- incoming/ and matches the keys to uploads, instead of probing pending uploads one HEAD each; abandoned presigns
-- expire by one UPDATE; an object that lands after its upload finished is deleted (control-plane/incoming.c,
-- reconcile.c, events.c; docs/uploads.md "What the reconciler does").

-- What one listed key under incoming/ is to us (control-plane/incoming.c), for a page of keys at once:
--   'blob'        a blob's storage_key names it (verified bytes kept at the upload's key): never touched;
--   'unrecorded'  no uploads row names it (by id or object_key): an orphan, or a record still only in Redis;
--   'pending'     PENDING: its object arrived without `complete` or event -> HEAD and mark it UPLOADED;
--   'held'        PENDING with checked_at in the future: left alone until then (tests, an operator's hold);
--   'processing'  UPLOADED: its job still needs the object;
--   'finished'    COMPLETED, ABORTED, EXPIRED or FAILED: nothing reads incoming/{id} again, so an object there
--                 is a late PUT with a URL that was still valid (or a leftover) and is deleted.
-- The keys must be incoming/{uuid} (the caller checks the shape).
-- Answers one row per key: its place in p_keys (1-based) and its class.
CREATE FUNCTION fm_incoming_classify(p_keys text[])
RETURNS TABLE (out_n bigint, out_class text)
LANGUAGE sql STABLE AS $$
    SELECT c.n,
           CASE WHEN EXISTS (SELECT 1 FROM blobs b WHERE b.storage_key = c.k) THEN 'blob'
                WHEN u.id IS NULL THEN 'unrecorded'
                WHEN u.status = 'PENDING' AND u.checked_at > now() THEN 'held'
                WHEN u.status = 'PENDING' THEN 'pending'
                WHEN u.status = 'UPLOADED' THEN 'processing'
                ELSE 'finished' END
    FROM unnest(p_keys) WITH ORDINALITY AS c(k, n)
    LEFT JOIN LATERAL (SELECT x.id, x.status, x.checked_at FROM uploads x
                       WHERE x.id = substr(c.k, 10)::uuid OR x.object_key = c.k LIMIT 1) u ON true
$$;

-- fm_upload_mark_uploaded for an object somebody saw (an S3 event, after a HEAD): the same outcomes 'uploaded',
-- 'size_mismatch' and 'unknown', and for an upload that was not PENDING any more, what its object is now:
--   'already'   a duplicate: the upload is UPLOADED and its job still needs the object (or failed on these very
--               bytes, kept for an admin retry), or a blob keeps the verified bytes at this key;
--   'finished'  the upload's job is over (COMPLETED: ready or quarantined), it was ABORTED, EXPIRED or FAILED, or
--               its job failed for good on other bytes than these (p_etag differs): the object is a PUT made
--               after the fact with a URL still valid, and the caller deletes it -- never served, never counted.
CREATE FUNCTION fm_upload_observed(p_upload_id uuid, p_size bigint, p_etag text, p_by text, p_bucket text)
RETURNS TABLE (outcome text, job_id uuid, file_id uuid)
LANGUAGE plpgsql AS $$
DECLARE
    m record;
    u uploads;
    job_state job_status;
BEGIN
    SELECT * INTO m FROM fm_upload_mark_uploaded(p_upload_id, p_size, p_etag, p_by, p_bucket) x;
    IF m.outcome NOT IN ('already', 'not_pending') THEN
        RETURN QUERY SELECT m.outcome, m.job_id, m.file_id;
        RETURN;
    END IF;
    SELECT * INTO u FROM uploads x WHERE x.id = p_upload_id;
    IF EXISTS (SELECT 1 FROM blobs b WHERE b.storage_key = u.object_key) THEN
        RETURN QUERY SELECT 'already'::text, m.job_id, m.file_id;
        RETURN;
    END IF;
    IF u.status = 'UPLOADED' THEN
        SELECT j.status INTO job_state FROM jobs j WHERE j.dedupe_key = 'upload:' || u.id::text;
        IF job_state IN ('FAILED', 'DEAD') AND u.etag IS DISTINCT FROM p_etag THEN
            RETURN QUERY SELECT 'finished'::text, m.job_id, m.file_id;
        ELSE
            RETURN QUERY SELECT 'already'::text, m.job_id, m.file_id;
        END IF;
        RETURN;
    END IF;
    RETURN QUERY SELECT 'finished'::text, m.job_id, m.file_id;
END $$;

-- The reconciler's marks of a page (control-plane/incoming.c): each upload whose object it found, with the size and
-- ETag a HEAD reported, through fm_upload_mark_uploaded -- one round trip for the page instead of one per upload.
CREATE FUNCTION fm_uploads_found(p_ids uuid[], p_sizes bigint[], p_etags text[], p_bucket text)
RETURNS TABLE (out_upload uuid, out_outcome text, out_job uuid, out_file uuid)
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    m record;
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_ids, 1), 0) LOOP
        SELECT * INTO m FROM fm_upload_mark_uploaded(p_ids[i], p_sizes[i], p_etags[i], 'reconciler', p_bucket) x;
        RETURN QUERY SELECT p_ids[i], m.outcome, m.job_id, m.file_id;
    END LOOP;
END $$;

-- Abandoned single-PUT presigns expire without an S3 call each. p_covered is the start of the last listing of
-- incoming/ that went through every key and settled each one (control-plane/incoming.c): an object that existed
-- then was seen, and its upload made UPLOADED (or FAILED). An upload is expired when, by p_covered, it was older
-- than p_expiry_s (FM_UPLOAD_EXPIRY_S: by then a PUT made with its URL has long finished) and its URL had run out
-- (expires_at), and no hold (checked_at) ended after p_covered: what is still PENDING then has no object. At most
-- p_limit rows per call (short transactions); the files become FAILED 'upload expired'. Returns the files changed
-- (their cached rows go).
CREATE FUNCTION fm_uploads_expire(p_expiry_s integer, p_covered timestamptz, p_limit integer)
RETURNS TABLE (out_file uuid)
LANGUAGE sql AS $$
    WITH u AS (
        UPDATE uploads SET status = 'EXPIRED', status_reason = 'abandoned'
        WHERE id IN (SELECT x.id FROM uploads x
                     WHERE x.status = 'PENDING' AND x.method = 'PUT' AND x.expires_at < p_covered
                       AND x.created_at < p_covered - make_interval(secs => p_expiry_s)
                       AND (x.checked_at IS NULL OR x.checked_at < p_covered)
                     ORDER BY x.expires_at LIMIT p_limit FOR UPDATE SKIP LOCKED)
          AND status = 'PENDING'
        RETURNING file_id)
    UPDATE files SET status = 'FAILED', status_reason = 'upload expired', updated_at = now(), version = version + 1
    WHERE id IN (SELECT file_id FROM u) RETURNING id
$$;

-- Deleting a file row (step 5's fm_trash_purge, an account's deletion) cascades to its uploads and clears the jobs
-- that name it or its uploads: without these, each deleted file scanned both tables, which a few million abandoned
-- presigns make long (a test's 100,000 took minutes to delete).
CREATE INDEX uploads_file_idx ON uploads (file_id);
CREATE INDEX jobs_file_idx ON jobs (file_id);
CREATE INDEX jobs_upload_idx ON jobs (upload_id);
