-- Trash (DESIGN.md §4 "Delete"; docs/downloads.md "Delete, restore, retention"): DELETE /v1/files/{id} moves a file
-- to the trash (files.deleted_at), POST /v1/files/{id}/restore brings it back within FM_TRASH_RETENTION_S, and the
-- control plane's reconciler deletes the rows trashed longer than that. fm-edge's caches are purged by purge_edge
-- jobs (lambda-workers/purge.c): one made when a file is trashed and no other live file keeps its blob's bytes in
-- use, one made by each cleanup_blob job that deleted a blob's objects.

ALTER TABLE jobs DROP CONSTRAINT jobs_type_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_type_check
    CHECK (type IN ('process_upload', 'cleanup_blob', 'purge_file', 'abort_multipart', 'purge_edge'));

-- The reconciler's look for rows past the retention period.
CREATE INDEX files_trash_idx ON files (deleted_at) WHERE deleted_at IS NOT NULL;

-- The keys of a blob that fm-edge may hold or serve: its object and its stored variants (blobs.variants is
-- {name: {format: {key, …}}}), as a JSON array.
CREATE FUNCTION fm_blob_keys(p_storage_key text, p_variants jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_array(p_storage_key) || coalesce((
        SELECT jsonb_agg(v.value->'key') FROM jsonb_each(p_variants) k, jsonb_each(k.value) v
        WHERE jsonb_typeof(k.value) = 'object' AND jsonb_typeof(v.value) = 'object'
          AND jsonb_typeof(v.value->'key') = 'string'), '[]'::jsonb)
$$;

-- A purge_edge job (not yet on the stream: the caller adds it) for a blob's object and its variants: fm-edge purges
-- the object key with every on-the-fly variant rendered from it, and the prefix variants/{sha256}/ (the stored
-- variants are content-addressed there). file_id stays NULL: the worker's job transitions (schema 004) change the
-- job's file, and this job must not touch it.
CREATE FUNCTION fm_purge_job(p_sha256 bytea, p_storage_key text, p_reason text, p_file uuid) RETURNS uuid
LANGUAGE sql AS $$
    INSERT INTO jobs (type, payload)
    VALUES ('purge_edge', jsonb_build_object(
        'reason', p_reason, 'file_id', p_file, 'sha256', encode(p_sha256, 'hex'),
        'keys', jsonb_build_array(p_storage_key),
        'prefixes', jsonb_build_array('variants/' || encode(p_sha256, 'hex') || '/')))
    RETURNING id
$$;

-- DELETE /v1/files/{id}: the owner's file to the trash. No row: unknown or not the owner's. outcome 'trashed', or
-- 'in_trash' when it was already there (nothing changes; the caller answers 404 but still repairs Redis, so a DELETE
-- repeated after a Redis failure puts Redis right). With a blob it answers what Redis must learn, each checked
-- after this file left: out_keep_public (a live public file still points at the blob: its keys stay in fm:public),
-- out_owner_holds (the owner has another live READY file on it: the dedupe index keeps the hash), and the purge
-- job made when no live file points at the blob any more (the edge may drop its bytes; with one left they stay
-- served for that file and purging would only force a refill).
-- The blob row is locked (FOR NO KEY UPDATE: the foreign-key checks of files pointing at it still pass) so that two
-- trash/restore calls on files sharing a blob run one after the other and each sees the other's outcome; plpgsql
-- runs each statement below on a fresh snapshot, which a single SQL statement would not.
CREATE FUNCTION fm_file_trash(p_file uuid, p_owner uuid)
RETURNS TABLE (outcome text, out_sha256 text, out_keys jsonb, out_keep_public boolean, out_owner_holds boolean,
               out_purge_job uuid)
LANGUAGE plpgsql AS $$
DECLARE
    f files;
    b blobs;
    job uuid;
    live_other boolean;
    public_other boolean;
    holds boolean;
BEGIN
    SELECT * INTO f FROM files WHERE id = p_file AND owner_id = p_owner FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF f.blob_sha256 IS NOT NULL THEN
        SELECT * INTO b FROM blobs WHERE sha256 = f.blob_sha256 FOR NO KEY UPDATE;
    END IF;
    IF f.deleted_at IS NULL THEN
        UPDATE files SET deleted_at = now(), updated_at = now(), version = version + 1 WHERE id = f.id;
    END IF;
    IF b.sha256 IS NULL THEN -- no blob (not verified yet, or refused): nothing for the edge or the index
        RETURN QUERY SELECT CASE WHEN f.deleted_at IS NULL THEN 'trashed' ELSE 'in_trash' END, NULL::text,
                            '[]'::jsonb, false, false, NULL::uuid;
        RETURN;
    END IF;
    SELECT EXISTS (SELECT 1 FROM files o WHERE o.blob_sha256 = b.sha256 AND o.id <> f.id AND o.deleted_at IS NULL),
           EXISTS (SELECT 1 FROM files o WHERE o.blob_sha256 = b.sha256 AND o.id <> f.id AND o.deleted_at IS NULL
                   AND o.visibility = 'public'),
           EXISTS (SELECT 1 FROM files o WHERE o.blob_sha256 = b.sha256 AND o.id <> f.id AND o.deleted_at IS NULL
                   AND o.owner_id = p_owner AND o.status = 'READY')
        INTO live_other, public_other, holds;
    IF f.deleted_at IS NULL AND NOT live_other THEN
        job := fm_purge_job(b.sha256, b.storage_key, 'delete', f.id);
    END IF;
    RETURN QUERY SELECT CASE WHEN f.deleted_at IS NULL THEN 'trashed' ELSE 'in_trash' END, encode(b.sha256, 'hex'),
                        fm_blob_keys(b.storage_key, b.variants), public_other, holds, job;
END $$;

-- POST /v1/files/{id}/restore: the owner's file out of the trash. No row: unknown or not the owner's. outcome
-- 'restored', 'not_deleted' (nothing changes; the caller answers 409 but still repairs Redis, as for a repeated
-- DELETE), or 'expired' (trashed longer than p_retention_s: the reconciler deletes it at its next round; it cannot
-- come back). With a blob: its keys, whether they belong in fm:public (the file is public and READY) and the blob's
-- size for the owner's dedupe index (when the file is READY).
CREATE FUNCTION fm_file_restore(p_file uuid, p_owner uuid, p_retention_s integer)
RETURNS TABLE (outcome text, out_sha256 text, out_keys jsonb, out_public boolean, out_ready_size bigint)
LANGUAGE plpgsql AS $$
DECLARE
    f files;
    b blobs;
BEGIN
    SELECT * INTO f FROM files WHERE id = p_file AND owner_id = p_owner FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF f.deleted_at < now() - make_interval(secs => p_retention_s) THEN
        RETURN QUERY SELECT 'expired', NULL::text, '[]'::jsonb, false, NULL::bigint;
        RETURN;
    END IF;
    IF f.blob_sha256 IS NOT NULL THEN -- the same lock order as fm_file_trash: file, then blob
        SELECT * INTO b FROM blobs WHERE sha256 = f.blob_sha256 FOR NO KEY UPDATE;
    END IF;
    IF f.deleted_at IS NOT NULL THEN
        UPDATE files SET deleted_at = NULL, updated_at = now(), version = version + 1 WHERE id = f.id;
    END IF;
    IF b.sha256 IS NULL THEN
        RETURN QUERY SELECT CASE WHEN f.deleted_at IS NULL THEN 'not_deleted' ELSE 'restored' END, NULL::text,
                            '[]'::jsonb, false, NULL::bigint;
        RETURN;
    END IF;
    RETURN QUERY SELECT CASE WHEN f.deleted_at IS NULL THEN 'not_deleted' ELSE 'restored' END,
                        encode(b.sha256, 'hex'), fm_blob_keys(b.storage_key, b.variants),
                        f.visibility = 'public' AND f.status = 'READY',
                        CASE WHEN f.status = 'READY' THEN b.size END;
END $$;

-- One round of the retention step of the reconciler (control-plane/reconcile.c): deletes at most p_limit files
-- trashed longer than p_retention_s (their uploads, shares and grants go with them: ON DELETE CASCADE), except
-- those whose upload the reconciler still has to finish -- PENDING or UPLOADED, or ABORTED/FAILED while its
-- presigned URL could still put an object (p_upload_window_s): deleting the row would lose the expiry or the sweep
-- that deletes that object. Each blob left with no reference (schema 005 fm_blob_referenced, the cleanup scan's own
-- test) is marked unreferenced and gets its cleanup_blob job at once, as the scan would make it after
-- FM_BLOB_GRACE_S: the retention period was the grace. Returns one row per deleted file (out_job NULL) and one per
-- job the caller puts on the stream (out_file NULL).
CREATE FUNCTION fm_trash_purge(p_retention_s integer, p_upload_window_s integer, p_limit integer)
RETURNS TABLE (out_file uuid, out_job uuid)
LANGUAGE plpgsql AS $$
DECLARE
    gone_files uuid[];
    gone_blobs bytea[];
BEGIN
    WITH gone AS (
        DELETE FROM files WHERE id IN (
            SELECT f.id FROM files f
            WHERE f.deleted_at < now() - make_interval(secs => p_retention_s)
              AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.file_id = f.id
                              AND (u.status IN ('PENDING', 'UPLOADED')
                                   OR (u.status IN ('ABORTED', 'FAILED')
                                       AND u.created_at > now() - make_interval(secs => p_upload_window_s))))
            ORDER BY f.deleted_at LIMIT p_limit FOR UPDATE SKIP LOCKED)
        RETURNING id, blob_sha256)
    SELECT coalesce(array_agg(id), '{}'), coalesce(array_agg(DISTINCT blob_sha256) FILTER (WHERE blob_sha256 IS NOT NULL), '{}')
        INTO gone_files, gone_blobs FROM gone;
    UPDATE blobs SET unreferenced_since = coalesce(unreferenced_since, now()), ref_count = 0
        WHERE sha256 = ANY (gone_blobs) AND NOT fm_blob_referenced(sha256);
    RETURN QUERY SELECT unnest(gone_files), NULL::uuid;
    RETURN QUERY
    INSERT INTO jobs AS j (type, dedupe_key, payload)
        SELECT 'cleanup_blob', 'cleanup_blob:' || encode(b.sha256, 'hex'),
               jsonb_build_object('sha256', encode(b.sha256, 'hex'), 'unreferenced_since', b.unreferenced_since,
                                  'reason', 'trash retention')
        FROM blobs b
        WHERE b.sha256 = ANY (gone_blobs) AND b.unreferenced_since IS NOT NULL AND NOT fm_blob_referenced(b.sha256)
    ON CONFLICT (dedupe_key) DO UPDATE
        SET status = 'QUEUED', attempts = 0, last_error = NULL, started_at = NULL, finished_at = NULL,
            enqueued_at = NULL, created_at = now(), payload = EXCLUDED.payload
        WHERE j.status IN ('DONE', 'FAILED')
           OR (j.status = 'QUEUED' AND j.enqueued_at < now() - interval '1 hour')
    RETURNING NULL::uuid, j.id;
END $$;
