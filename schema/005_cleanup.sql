-- Cleanup (issue 4, item 4; docs/workers.md "Cleanup"): a blob that no file references any more is deleted -- its
-- object and its variants, then its row -- once it has been unreferenced for FM_BLOB_GRACE_S, by a cleanup_blob job
-- on the same stream as the processing jobs (lambda-workers/cleanup.c). The scan that makes those jobs runs in one
-- worker's housekeeping thread at a time.

-- Set by the scan the first time it finds no reference to the blob, cleared when it finds one again.
ALTER TABLE blobs ADD COLUMN unreferenced_since timestamptz;
CREATE INDEX blobs_unreferenced_idx ON blobs (unreferenced_since) WHERE unreferenced_since IS NOT NULL;
-- fm_blob_referenced's look at the uploads being processed.
CREATE INDEX uploads_uploaded_sha256_idx ON uploads (claimed_sha256) WHERE status = 'UPLOADED';

-- Whether anything still needs the blob's bytes:
--   * any file row pointing at it, one in the trash (deleted_at set) included: a trashed file can be restored until
--     it is purged (the row deleted), and the foreign key files.blob_sha256 would refuse the delete anyway;
--   * an upload of the same content being processed (UPLOADED): its job may have found this blob already
--     (describe/variants skipped) and is about to point its file at it. Its claimed hash is the verified one, or
--     the job quarantines it before it gets there.
CREATE FUNCTION fm_blob_referenced(p_sha256 bytea) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM files WHERE blob_sha256 = p_sha256)
        OR EXISTS (SELECT 1 FROM uploads WHERE claimed_sha256 = p_sha256 AND status = 'UPLOADED')
$$;

-- One round of the scan: blobs found unreferenced get unreferenced_since = now() (and ref_count 0), those
-- referenced again lose it, and each blob unreferenced for longer than p_grace_s gets a cleanup_blob job (at most
-- p_limit per round, oldest first). Returns the jobs the caller puts on the stream: new ones, a finished one
-- (DONE/FAILED) of a blob that is unreferenced again, and a QUEUED one whose stream entry was made over an hour ago
-- and may have been lost with Redis' data (a duplicate delivery is harmless: the job takes a lock and checks its
-- status). A job whose XADD fails keeps enqueued_at NULL and the control plane's reconciler adds it.
CREATE FUNCTION fm_cleanup_scan(p_grace_s integer, p_limit integer)
RETURNS TABLE (out_job uuid, out_sha256 text)
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE blobs SET unreferenced_since = now(), ref_count = 0
        WHERE sha256 IN (SELECT b.sha256 FROM blobs b
                         WHERE b.unreferenced_since IS NULL AND NOT fm_blob_referenced(b.sha256)
                         LIMIT p_limit FOR UPDATE SKIP LOCKED);
    UPDATE blobs b SET unreferenced_since = NULL
        WHERE b.unreferenced_since IS NOT NULL AND fm_blob_referenced(b.sha256);
    RETURN QUERY
    INSERT INTO jobs AS j (type, dedupe_key, payload)
        SELECT 'cleanup_blob', 'cleanup_blob:' || encode(b.sha256, 'hex'),
               jsonb_build_object('sha256', encode(b.sha256, 'hex'), 'unreferenced_since', b.unreferenced_since)
        FROM blobs b
        WHERE b.unreferenced_since < now() - make_interval(secs => p_grace_s)
        ORDER BY b.unreferenced_since LIMIT p_limit
    ON CONFLICT (dedupe_key) DO UPDATE
        SET status = 'QUEUED', attempts = 0, last_error = NULL, started_at = NULL, finished_at = NULL,
            enqueued_at = NULL, created_at = now(), payload = EXCLUDED.payload
        WHERE j.status IN ('DONE', 'FAILED')
           OR (j.status = 'QUEUED' AND j.enqueued_at < now() - interval '1 hour')
    RETURNING j.id, j.payload->>'sha256';
END $$;
