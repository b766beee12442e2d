-- The trash view and its purges, and the change log behind GET /v1/files/delta (issue 11 items 3 and 5;
-- docs/decisions.md "Trash and delta (issue 11 items 3, 5)", docs/downloads.md "Delete, restore, retention").

-- ---- The trash ----------------------------------------------------------------------------------------------------

-- GET /v1/trash: an owner's entries trashed on their own (trashed_with NULL; what a trashed folder took shows as
-- that folder), newest first, keyset-paged on (deleted_at, id).
CREATE INDEX files_owner_trash_idx ON files (owner_id, deleted_at DESC, id DESC)
    WHERE deleted_at IS NOT NULL AND trashed_with IS NULL;
CREATE INDEX folders_owner_trash_idx ON folders (owner_id, deleted_at DESC, id DESC)
    WHERE deleted_at IS NOT NULL AND trashed_with IS NULL;
-- The purges' look for a folder's files and for empty trashed folders.
CREATE INDEX files_owner_deleted_idx ON files (owner_id) WHERE deleted_at IS NOT NULL;
CREATE INDEX folders_parent_any_idx ON folders (parent_id) WHERE parent_id IS NOT NULL;

-- Whether an upload of the file may still put an object, so that its row must stay: the reconciler has to expire
-- it or sweep that object (schema 006 fm_trash_purge's rule, shared here by every purge).
CREATE FUNCTION fm_file_upload_busy(p_file uuid, p_upload_window_s integer) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM uploads u WHERE u.file_id = p_file
                   AND (u.status IN ('PENDING', 'UPLOADED')
                        OR (u.status IN ('ABORTED', 'FAILED')
                            AND u.created_at > now() - make_interval(secs => p_upload_window_s))))
$$;

-- Deletes the given file rows (the caller locked them; their uploads, shares and grants go with them: ON DELETE
-- CASCADE). Each blob left with no reference (schema 005 fm_blob_referenced) is marked unreferenced and gets its
-- cleanup_blob job at once (its worker deletes the object and variants, then makes the purge_edge job): the time in
-- the trash was the grace. Rows ('file', id) per deleted file and ('job', id) per job the caller puts on the stream.
CREATE FUNCTION fm_purge_file_rows(p_files uuid[], p_reason text)
RETURNS TABLE (out_kind text, out_id uuid)
LANGUAGE plpgsql AS $$
DECLARE
    gone_files uuid[];
    gone_blobs bytea[];
BEGIN
    WITH gone AS (DELETE FROM files WHERE id = ANY (p_files) RETURNING id, blob_sha256)
    SELECT coalesce(array_agg(id), '{}'),
           coalesce(array_agg(DISTINCT blob_sha256) FILTER (WHERE blob_sha256 IS NOT NULL), '{}')
        INTO gone_files, gone_blobs FROM gone;
    UPDATE blobs SET unreferenced_since = coalesce(unreferenced_since, now()), ref_count = 0
        WHERE sha256 = ANY (gone_blobs) AND NOT fm_blob_referenced(sha256);
    RETURN QUERY SELECT 'file', unnest(gone_files);
    RETURN QUERY
    INSERT INTO jobs AS j (type, dedupe_key, payload)
        SELECT 'cleanup_blob', 'cleanup_blob:' || encode(b.sha256, 'hex'),
               jsonb_build_object('sha256', encode(b.sha256, 'hex'), 'unreferenced_since', b.unreferenced_since,
                                  'reason', p_reason)
        FROM blobs b
        WHERE b.sha256 = ANY (gone_blobs) AND b.unreferenced_since IS NOT NULL AND NOT fm_blob_referenced(b.sha256)
    ON CONFLICT (dedupe_key) DO UPDATE
        SET status = 'QUEUED', attempts = 0, last_error = NULL, started_at = NULL, finished_at = NULL,
            enqueued_at = NULL, created_at = now(), payload = EXCLUDED.payload
        WHERE j.status IN ('DONE', 'FAILED')
           OR (j.status = 'QUEUED' AND j.enqueued_at < now() - interval '1 hour')
    RETURNING 'job', j.id;
END $$;

-- Deletes trashed folders that hold nothing any more (no file, no subfolder), leaves first, so a whole trashed tree
-- goes in one call once its files are gone (depth < 32: at most 32 passes). A folder still holding a file (one
-- whose upload is in flight, or a live one restored into it) stays with its ancestors. p_owner NULL = everyone's;
-- p_before: only folders trashed before it. At most p_limit folders. Returns how many went.
CREATE FUNCTION fm_purge_empty_folders(p_owner uuid, p_before timestamptz, p_limit integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
    total integer := 0;
BEGIN
    FOR pass IN 1..33 LOOP
        EXIT WHEN total >= p_limit;
        DELETE FROM folders WHERE id IN (
            SELECT d.id FROM folders d
            WHERE d.deleted_at IS NOT NULL AND d.deleted_at < p_before
              AND (p_owner IS NULL OR d.owner_id = p_owner)
              AND NOT EXISTS (SELECT 1 FROM files f WHERE f.folder_id = d.id)
              AND NOT EXISTS (SELECT 1 FROM folders c WHERE c.parent_id = d.id)
            LIMIT p_limit - total FOR UPDATE SKIP LOCKED);
        GET DIAGNOSTICS n = ROW_COUNT;
        EXIT WHEN n = 0;
        total := total + n;
    END LOOP;
    RETURN total;
END $$;

-- The reconciler's retention step (schema 006), now with folders: first at most p_limit files trashed longer than
-- p_retention_s (as before), then the trashed folders past it that those deletions emptied (files.folder_id is
-- ON DELETE RESTRICT: files before their folders). Same result rows as before: one per deleted file (out_job NULL)
-- and one per cleanup_blob job for the caller's stream (out_file NULL).
CREATE OR REPLACE FUNCTION fm_trash_purge(p_retention_s integer, p_upload_window_s integer, p_limit integer)
RETURNS TABLE (out_file uuid, out_job uuid)
LANGUAGE plpgsql AS $$
DECLARE
    ids uuid[];
BEGIN
    SELECT coalesce(array_agg(id), '{}') INTO ids FROM (
        SELECT f.id FROM files f
        WHERE f.deleted_at < now() - make_interval(secs => p_retention_s)
          AND NOT fm_file_upload_busy(f.id, p_upload_window_s)
        ORDER BY f.deleted_at LIMIT p_limit FOR UPDATE SKIP LOCKED) x;
    RETURN QUERY SELECT CASE WHEN r.out_kind = 'file' THEN r.out_id END, CASE WHEN r.out_kind = 'job' THEN r.out_id END
                 FROM fm_purge_file_rows(ids, 'trash retention') r;
    PERFORM fm_purge_empty_folders(NULL, now() - make_interval(secs => p_retention_s), p_limit);
END $$;

-- DELETE /v1/trash/{id}: one entry of the owner's trash (trashed on its own) purged for good: a file, or a folder
-- with everything under it (every row under it is in the trash: what its trash took, and what was trashed on its
-- own inside it before). Rows: ('outcome', 'purged' | 'not_found' | 'busy' (an upload of one of its files may still
-- put an object: nothing changes, retry later) | 'not_empty' (a live entry sits under the folder: nothing changes)),
-- then ('file', id) per deleted file, ('folder', id) per deleted folder, ('job', id) per job for the stream.
CREATE FUNCTION fm_trash_purge_item(p_owner uuid, p_id uuid, p_upload_window_s integer)
RETURNS TABLE (out_kind text, out_id text)
LANGUAGE plpgsql AS $$
DECLARE
    sub uuid[];
    fs uuid[];
BEGIN
    PERFORM 1 FROM files WHERE id = p_id AND owner_id = p_owner AND deleted_at IS NOT NULL AND trashed_with IS NULL
        FOR UPDATE;
    IF FOUND THEN
        IF fm_file_upload_busy(p_id, p_upload_window_s) THEN
            RETURN QUERY SELECT 'outcome', 'busy';
            RETURN;
        END IF;
        RETURN QUERY SELECT 'outcome', 'purged';
        RETURN QUERY SELECT r.out_kind, r.out_id::text FROM fm_purge_file_rows(ARRAY[p_id], 'purged from the trash') r;
        RETURN;
    END IF;
    -- The folder row first: a restore of the same folder locks it too, so the two run one after the other.
    PERFORM 1 FROM folders WHERE id = p_id AND owner_id = p_owner AND deleted_at IS NOT NULL AND trashed_with IS NULL
        FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'outcome', 'not_found';
        RETURN;
    END IF;
    SELECT array_agg(id) INTO sub FROM (
        SELECT id FROM folders WHERE owner_id = p_owner AND (id = p_id OR ancestors @> ARRAY[p_id])
        ORDER BY id FOR UPDATE) x;
    SELECT coalesce(array_agg(id), '{}') INTO fs FROM (
        SELECT id FROM files WHERE folder_id = ANY (sub) ORDER BY id FOR UPDATE) x;
    IF EXISTS (SELECT 1 FROM folders WHERE id = ANY (sub) AND deleted_at IS NULL)
       OR EXISTS (SELECT 1 FROM files WHERE id = ANY (fs) AND deleted_at IS NULL) THEN
        RETURN QUERY SELECT 'outcome', 'not_empty';
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(fs) f WHERE fm_file_upload_busy(f, p_upload_window_s)) THEN
        RETURN QUERY SELECT 'outcome', 'busy';
        RETURN;
    END IF;
    RETURN QUERY SELECT 'outcome', 'purged';
    RETURN QUERY SELECT r.out_kind, r.out_id::text FROM fm_purge_file_rows(fs, 'purged from the trash') r;
    RETURN QUERY WITH gone AS (DELETE FROM folders WHERE id = ANY (sub) RETURNING id) SELECT 'folder', id::text FROM gone;
END $$;

-- DELETE /v1/trash: one bounded round of emptying the owner's trash: at most p_limit of its trashed files, then the
-- trashed folders emptied (at most p_limit). Files whose upload may still put an object stay (with their folders)
-- until the reconciler's retention takes them. Rows: ('outcome', 'more' (the bound was reached: call again) |
-- 'done'), ('file', id) per deleted file, ('job', id) per job for the stream.
CREATE FUNCTION fm_trash_empty(p_owner uuid, p_upload_window_s integer, p_limit integer)
RETURNS TABLE (out_kind text, out_id text)
LANGUAGE plpgsql AS $$
DECLARE
    ids uuid[];
    folders_gone integer;
BEGIN
    SELECT coalesce(array_agg(id), '{}') INTO ids FROM (
        SELECT f.id FROM files f
        WHERE f.owner_id = p_owner AND f.deleted_at IS NOT NULL AND NOT fm_file_upload_busy(f.id, p_upload_window_s)
        LIMIT p_limit FOR UPDATE SKIP LOCKED) x;
    RETURN QUERY SELECT r.out_kind, r.out_id::text FROM fm_purge_file_rows(ids, 'trash emptied') r;
    folders_gone := CASE WHEN cardinality(ids) < p_limit THEN fm_purge_empty_folders(p_owner, 'infinity', p_limit)
                         ELSE 0 END;
    RETURN QUERY SELECT 'outcome', CASE WHEN cardinality(ids) >= p_limit OR folders_gone >= p_limit THEN 'more'
                                        ELSE 'done' END;
END $$;

-- GET /v1/trash: one page, newest deleted first, after the keyset (p_after_us microseconds since the epoch, p_after_id)
-- of the last item of the previous page (both NULL: the first page). p_limit + 1 rows: one more tells that a next
-- page exists.
CREATE FUNCTION fm_trash_list(p_owner uuid, p_after_us bigint, p_after_id uuid, p_limit integer, p_retention_s integer)
RETURNS TABLE (kind text, id uuid, name text, size bigint, parent uuid, deleted_us bigint, deleted_at text,
               purge_at text)
LANGUAGE sql STABLE AS $$
    WITH k AS (SELECT coalesce(timestamptz 'epoch' + p_after_us * interval '1 microsecond', 'infinity') AS at,
                      coalesce(p_after_id, 'ffffffff-ffff-ffff-ffff-ffffffffffff') AS id),
    items AS (
        (SELECT 'file' AS kind, f.id, f.name, f.size, f.folder_id AS parent, f.deleted_at
         FROM files f, k WHERE f.owner_id = p_owner AND f.deleted_at IS NOT NULL AND f.trashed_with IS NULL
           AND (f.deleted_at, f.id) < (k.at, k.id)
         ORDER BY f.deleted_at DESC, f.id DESC LIMIT p_limit + 1)
        UNION ALL
        (SELECT 'folder', d.id, d.name, NULL::bigint, d.parent_id, d.deleted_at
         FROM folders d, k WHERE d.owner_id = p_owner AND d.deleted_at IS NOT NULL AND d.trashed_with IS NULL
           AND (d.deleted_at, d.id) < (k.at, k.id)
         ORDER BY d.deleted_at DESC, d.id DESC LIMIT p_limit + 1))
    SELECT kind, id, name, size, parent, (extract(epoch FROM deleted_at) * 1000000)::bigint,
           to_char(deleted_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
           to_char((deleted_at + make_interval(secs => p_retention_s)) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
    FROM items ORDER BY deleted_at DESC, id DESC LIMIT p_limit + 1
$$;

-- ---- The change log (GET /v1/files/delta) -------------------------------------------------------------------------

-- One row per change of a file or folder, written by statement-level triggers (one INSERT ... SELECT per statement
-- from its transition tables, so the write-behind batch insert of thousands of files costs one statement more, not
-- one per row). The feed's order is (xid, seq), not seq alone: a seq is taken when the row is written, not when its
-- transaction commits, so a reader could see seq 11 committed while seq 10's transaction is still open and step past
-- it for good. A reader only takes rows whose transaction is older than every transaction still running (xid below
-- its snapshot's xmin): their set is final, and every later commit has a larger xid, so it sorts after them.
CREATE TABLE tree_changes (
    seq         bigserial PRIMARY KEY,
    xid         xid8 NOT NULL DEFAULT pg_current_xact_id(),
    owner_id    uuid NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('file', 'folder')),
    entry_id    uuid NOT NULL,
    op          text NOT NULL CHECK (op IN ('created', 'updated', 'renamed', 'moved', 'trashed', 'restored',
                                            'deleted')),
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tree_changes_owner_idx ON tree_changes (owner_id, xid, seq);
CREATE INDEX tree_changes_at_idx ON tree_changes (at);

-- The newest (xid, seq) the retention deleted: a cursor before it may have missed changes (410 cursor_expired).
CREATE TABLE tree_changes_pruned (
    one     boolean PRIMARY KEY DEFAULT true CHECK (one),
    xid     xid8 NOT NULL,
    seq     bigint NOT NULL
);
INSERT INTO tree_changes_pruned VALUES (true, '0', 0);

-- What an UPDATE of a row changed, for the feed: trashed/restored before moved before renamed before updated (the
-- entry carries the whole row anyway). NULL: nothing a client sees (a folder's ancestors rewritten by a move of
-- one of its ancestors: its own parent did not change).
CREATE FUNCTION fm_change_op(o_deleted timestamptz, n_deleted timestamptz, o_parent uuid, n_parent uuid,
                             o_name text, n_name text, o_row jsonb, n_row jsonb) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN o_deleted IS NULL AND n_deleted IS NOT NULL THEN 'trashed'
                WHEN o_deleted IS NOT NULL AND n_deleted IS NULL THEN 'restored'
                WHEN o_parent IS DISTINCT FROM n_parent THEN 'moved'
                WHEN o_name IS DISTINCT FROM n_name THEN 'renamed'
                WHEN (o_row - 'ancestors' - 'updated_at') IS DISTINCT FROM (n_row - 'ancestors' - 'updated_at')
                    THEN 'updated' END
$$;

CREATE FUNCTION fm_changes_files_ins() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tree_changes (owner_id, kind, entry_id, op) SELECT owner_id, 'file', id, 'created' FROM new_rows;
    RETURN NULL;
END $$;
CREATE FUNCTION fm_changes_files_del() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tree_changes (owner_id, kind, entry_id, op) SELECT owner_id, 'file', id, 'deleted' FROM old_rows;
    RETURN NULL;
END $$;
CREATE FUNCTION fm_changes_files_upd() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tree_changes (owner_id, kind, entry_id, op)
        SELECT n.owner_id, 'file', n.id, op FROM old_rows o JOIN new_rows n ON n.id = o.id,
            LATERAL fm_change_op(o.deleted_at, n.deleted_at, o.folder_id, n.folder_id, o.name, n.name,
                                 to_jsonb(o), to_jsonb(n)) op
        WHERE op IS NOT NULL;
    RETURN NULL;
END $$;
CREATE FUNCTION fm_changes_folders_ins() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tree_changes (owner_id, kind, entry_id, op) SELECT owner_id, 'folder', id, 'created' FROM new_rows;
    RETURN NULL;
END $$;
CREATE FUNCTION fm_changes_folders_del() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tree_changes (owner_id, kind, entry_id, op) SELECT owner_id, 'folder', id, 'deleted' FROM old_rows;
    RETURN NULL;
END $$;
CREATE FUNCTION fm_changes_folders_upd() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tree_changes (owner_id, kind, entry_id, op)
        SELECT n.owner_id, 'folder', n.id, op FROM old_rows o JOIN new_rows n ON n.id = o.id,
            LATERAL fm_change_op(o.deleted_at, n.deleted_at, o.parent_id, n.parent_id, o.name, n.name,
                                 to_jsonb(o), to_jsonb(n)) op
        WHERE op IS NOT NULL;
    RETURN NULL;
END $$;

CREATE TRIGGER files_changes_ins AFTER INSERT ON files REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION fm_changes_files_ins();
CREATE TRIGGER files_changes_upd AFTER UPDATE ON files REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION fm_changes_files_upd();
CREATE TRIGGER files_changes_del AFTER DELETE ON files REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION fm_changes_files_del();
CREATE TRIGGER folders_changes_ins AFTER INSERT ON folders REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION fm_changes_folders_ins();
CREATE TRIGGER folders_changes_upd AFTER UPDATE ON folders REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION fm_changes_folders_upd();
CREATE TRIGGER folders_changes_del AFTER DELETE ON folders REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION fm_changes_folders_del();

-- The retention of the log (the reconciler, each round): at most p_limit rows older than p_retention_s whose
-- transaction is over, and the newest (xid, seq) they had moves up the expiry mark. Returns how many went.
CREATE FUNCTION fm_tree_changes_prune(p_retention_s integer, p_limit integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    WITH gone AS (
        DELETE FROM tree_changes WHERE seq IN (
            SELECT seq FROM tree_changes
            WHERE at < now() - make_interval(secs => p_retention_s)
              AND xid < pg_snapshot_xmin(pg_current_snapshot())
            ORDER BY at LIMIT p_limit)
        RETURNING xid, seq),
    top AS (SELECT xid, seq FROM gone ORDER BY xid DESC, seq DESC LIMIT 1),
    mark AS (UPDATE tree_changes_pruned p SET xid = top.xid, seq = top.seq FROM top
             WHERE (top.xid, top.seq) > (p.xid, p.seq) RETURNING 1)
    SELECT count(*) INTO n FROM gone;
    RETURN n;
END $$;

-- GET /v1/files/delta: the owner's changes after the cursor (p_xid, p_seq), at most p_limit, in (xid, seq) order.
-- out_expired: the retention deleted changes after the cursor (410). out_xid/out_seq: the next cursor (the last
-- change's place, or, on the last page, the horizon: every transaction below it is over and was read).
CREATE FUNCTION fm_delta(p_owner uuid, p_xid xid8, p_seq bigint, p_limit integer)
RETURNS TABLE (out_expired boolean, out_changes text, out_xid text, out_seq bigint, out_has_more boolean)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    horizon xid8 := pg_snapshot_xmin(pg_current_snapshot());
    pr tree_changes_pruned;
    last_xid xid8;
    last_seq bigint;
    n integer;
    body jsonb;
BEGIN
    SELECT * INTO pr FROM tree_changes_pruned;
    IF (p_xid, p_seq) < (pr.xid, pr.seq) THEN
        RETURN QUERY SELECT true, NULL::text, NULL::text, NULL::bigint, false;
        RETURN;
    END IF;
    -- The entries are joined (set-based index lookups), not read by a function call per change.
    WITH page AS (
        SELECT c.seq, c.xid, c.kind, c.entry_id, c.op FROM tree_changes c
        WHERE c.owner_id = p_owner AND (c.xid, c.seq) > (p_xid, p_seq) AND c.xid < horizon
        ORDER BY c.xid, c.seq LIMIT p_limit + 1),
    shown AS (
        SELECT s.*, CASE
            WHEN f.id IS NOT NULL THEN jsonb_build_object(
                'id', f.id, 'name', f.name, 'folder_id', f.folder_id, 'size', f.size, 'content_type', f.content_type,
                'status', f.status, 'visibility', f.visibility, 'version', f.version,
                'created_at', to_char(f.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                'updated_at', to_char(f.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                'deleted_at', to_char(f.deleted_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                'trashed_with', f.trashed_with)
            WHEN d.id IS NOT NULL THEN jsonb_build_object(
                'id', d.id, 'name', d.name, 'parent_id', d.parent_id, 'version', d.version,
                'created_at', to_char(d.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                'updated_at', to_char(d.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                'deleted_at', to_char(d.deleted_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                'trashed_with', d.trashed_with) END AS entry
        FROM (SELECT * FROM page ORDER BY xid, seq LIMIT p_limit) s
        LEFT JOIN files f ON s.kind = 'file' AND f.id = s.entry_id
        LEFT JOIN folders d ON s.kind = 'folder' AND d.id = s.entry_id)
    SELECT (SELECT count(*) FROM page),
           (SELECT coalesce(jsonb_agg(jsonb_build_object('seq', s.seq, 'kind', s.kind, 'id', s.entry_id, 'op', s.op,
                                                         'entry', s.entry) ORDER BY s.xid, s.seq), '[]')
            FROM shown s),
           (SELECT s.xid FROM shown s ORDER BY s.xid DESC, s.seq DESC LIMIT 1),
           (SELECT s.seq FROM shown s ORDER BY s.xid DESC, s.seq DESC LIMIT 1)
        INTO n, body, last_xid, last_seq;
    IF n > p_limit THEN
        RETURN QUERY SELECT false, body::text, last_xid::text, last_seq, true;
    ELSIF (p_xid, p_seq) >= (horizon, 0::bigint) THEN
        RETURN QUERY SELECT false, body::text, p_xid::text, p_seq, false;
    ELSE
        RETURN QUERY SELECT false, body::text, horizon::text, 0::bigint, false;
    END IF;
END $$;
