-- The dedupe checks ("does the owner still hold a READY file on this blob?": records.c's batch insert of dedupe
-- records, uploads_create.c's synchronous dedupe) by owner and blob at once. With only files_blob_idx and the
-- owner's indexes, an owner with many files not on that blob (100,000 pending uploads after a presign load) made
-- each check walk the owner's rows: measured, a dedupe load right after a presign load left batch inserts running
-- for tens of seconds, piling up behind their own timed-out retries, and the backlog's bound answered 503.
CREATE INDEX files_owner_blob_ready_idx ON files (owner_id, blob_sha256) WHERE status = 'READY' AND deleted_at IS NULL;
