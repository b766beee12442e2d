-- The folder routes (issue 11 item 1; control-plane/folders.c; docs/decisions.md "Folders (issue 11 item 1)"):
-- POST /v1/folders, GET/PATCH/DELETE /v1/folders/{id}, POST /v1/folders/{id}/restore. Each route is one call of a
-- function below, so every check and change of a route happens in one transaction.
--
-- Lock order (every function that changes the tree): folder rows first, always a whole set in one statement sorted by
-- id (fm_folder_lock_chain), so any two callers take the rows they share in the same order and never wait for each
-- other in a circle; then file rows (UPDATE); then blob rows sorted by sha256 (FOR NO KEY UPDATE, as fm_file_trash:
-- file, then blob). The sets: a create locks its parent's chain (the parent and its ancestors) FOR SHARE; a move, a
-- trash and a restore lock the folder's subtree (the folder and every folder below it) and, for a move or a
-- restore, the target's chain, FOR NO KEY UPDATE (fm_folder_lock_tree). So any two changes that could together make
-- a cycle, lose an update or leave a stale ancestors array share a locked row and run one after the other, and each
-- re-reads what it locked (a set that changed before the lock was granted is locked again). A function that could
-- still meet a deadlock (a set that changed under it, another writer's order) runs its body again, up to twice: the
-- subtransaction's rollback releases what it had locked.

-- The one permission rule of the folder routes: the folder `p_folder` as `p_owner` may act on it (live or in the
-- trash: the caller looks at deleted_at), or no row. Today: its owner. Sharing (issue 12: a grant on the folder or an
-- ancestor) extends this function and every folder route follows.
CREATE FUNCTION fm_folder_for(p_owner uuid, p_folder uuid) RETURNS SETOF folders
LANGUAGE sql STABLE AS $$
    SELECT * FROM folders WHERE id = p_folder AND owner_id = p_owner
$$;

-- Locks the folders `p_ids` in id order (FOR NO KEY UPDATE, or FOR SHARE when p_share). The sort below the locking step
-- makes the order the same for every caller, so two callers never wait for each other in a circle.
CREATE FUNCTION fm_folder_lock_chain(p_ids uuid[], p_share boolean) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_share THEN
        PERFORM 1 FROM (SELECT id FROM folders WHERE id = ANY (p_ids) ORDER BY id FOR SHARE) l;
    ELSE
        -- NO KEY UPDATE: what the UPDATEs that follow take anyway; the foreign-key checks of files being inserted
        -- into these folders (KEY SHARE) need not wait for it
        PERFORM 1 FROM (SELECT id FROM folders WHERE id = ANY (p_ids) ORDER BY id FOR NO KEY UPDATE) l;
    END IF;
END $$;

-- A folder as the routes answer it: {id, name, parent_id, path: [{id, name}] root → parent, created_at, updated_at}.
CREATE FUNCTION fm_folder_json(p_folder uuid) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'id', f.id, 'name', f.name, 'parent_id', f.parent_id,
        'path', coalesce((SELECT json_agg(json_build_object('id', a.id, 'name', a.name) ORDER BY u.ord)
                          FROM unnest(f.ancestors) WITH ORDINALITY u(aid, ord) JOIN folders a ON a.id = u.aid),
                         '[]'::json),
        'created_at', to_char(f.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
        'updated_at', to_char(f.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
    FROM folders f WHERE f.id = p_folder
$$;

-- Whether the owner's folder `p_parent` (NULL = the root) already holds p_max live entries (files and folders; the
-- entry_names rows of that parent, read from its primary key, at most p_max of them).
CREATE FUNCTION fm_folder_full(p_owner uuid, p_parent uuid, p_max integer) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT count(*) >= p_max FROM (SELECT 1 FROM entry_names
                                   WHERE owner_id = p_owner AND parent_key = fm_parent_key(p_parent) LIMIT p_max) e
$$;

-- Locks the chain of the owner's live folder p_parent (itself and its ancestors) and returns its ancestors as they
-- are once locked; NULL when it is not the owner's live folder. Retries when a move changed the chain meanwhile.
CREATE FUNCTION fm_folder_lock_parent(p_owner uuid, p_parent uuid, p_share boolean, p_extra uuid[])
RETURNS uuid[]
LANGUAGE plpgsql AS $$
DECLARE
    before uuid[];
    after uuid[];
    live boolean;
BEGIN
    LOOP
        SELECT ancestors INTO before FROM fm_folder_for(p_owner, p_parent) WHERE deleted_at IS NULL;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
        PERFORM fm_folder_lock_chain(before || p_parent || p_extra, p_share);
        SELECT ancestors, deleted_at IS NULL INTO after, live FROM fm_folder_for(p_owner, p_parent);
        IF NOT FOUND OR NOT live THEN
            RETURN NULL;
        END IF;
        IF after = before THEN
            RETURN after;
        END IF;
    END LOOP;
END $$;

-- Locks FOR NO KEY UPDATE, in one sorted statement, the subtree of the owner's folder p_folder (itself and every
-- folder below it, live or trashed) and, when p_target is not NULL, p_target and its ancestors. Once p_folder is held nothing can
-- enter or leave the subtree (a create holds its parent's chain, which would include p_folder; a move holds the
-- subtree it moves and its target's chain), so one re-read tells whether the set locked is the whole set.
CREATE FUNCTION fm_folder_lock_tree(p_owner uuid, p_folder uuid, p_target uuid) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    locked uuid[] := '{}';
    wanted uuid[];
BEGIN
    LOOP
        SELECT array_agg(id) INTO wanted FROM (
            SELECT id FROM folders WHERE id = p_folder AND owner_id = p_owner
            UNION
            SELECT id FROM folders WHERE ancestors @> ARRAY[p_folder] AND owner_id = p_owner
            UNION
            SELECT unnest(ancestors || id) FROM folders WHERE id = p_target AND owner_id = p_owner) s;
        IF wanted IS NULL OR locked @> wanted THEN
            RETURN;
        END IF;
        PERFORM fm_folder_lock_chain(wanted, false);
        locked := locked || wanted;
    END LOOP;
END $$;

-- POST /v1/folders. outcome: 'created' (out_folder its JSON), 'parent_not_found', 'too_deep', 'full', 'name_taken'.
CREATE FUNCTION fm_folder_create(p_owner uuid, p_parent uuid, p_name text, p_rename boolean, p_entries_max integer)
RETURNS TABLE (outcome text, out_folder json)
LANGUAGE plpgsql AS $$
DECLARE
    chain uuid[];
    new_id uuid;
    chosen text := p_name;
    tries integer := 0;
BEGIN
    LOOP
        BEGIN
            chain := '{}';
            IF p_parent IS NOT NULL THEN
                chain := fm_folder_lock_parent(p_owner, p_parent, true, '{}');
                IF chain IS NULL THEN
                    RETURN QUERY SELECT 'parent_not_found', NULL::json;
                    RETURN;
                END IF;
                chain := chain || p_parent;
            END IF;
            IF cardinality(chain) >= 32 THEN -- folders_depth: at most 31 folders above a folder
                RETURN QUERY SELECT 'too_deep', NULL::json;
                RETURN;
            END IF;
            IF fm_folder_full(p_owner, p_parent, p_entries_max) THEN
                RETURN QUERY SELECT 'full', NULL::json;
                RETURN;
            END IF;
            LOOP
                IF p_rename THEN
                    chosen := fm_free_name(p_owner, p_parent, p_name);
                END IF;
                BEGIN
                    INSERT INTO folders (owner_id, parent_id, name, ancestors) VALUES (p_owner, p_parent, chosen, chain)
                        RETURNING id INTO new_id;
                    EXIT;
                EXCEPTION WHEN unique_violation THEN -- entry_names_pkey: a live sibling holds the name
                    IF NOT p_rename THEN
                        RETURN QUERY SELECT 'name_taken', NULL::json;
                        RETURN;
                    END IF; -- a sibling took fm_free_name's choice meanwhile: choose again
                END;
            END LOOP;
            RETURN QUERY SELECT 'created', fm_folder_json(new_id);
            RETURN;
        EXCEPTION WHEN deadlock_detected THEN
            tries := tries + 1;
            IF tries > 2 THEN
                RAISE;
            END IF;
        END;
    END LOOP;
END $$;

-- GET /v1/folders/{id}: the owner's live folder, or no row.
CREATE FUNCTION fm_folder_get(p_owner uuid, p_folder uuid) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT fm_folder_json(f.id) FROM fm_folder_for(p_owner, p_folder) f WHERE f.deleted_at IS NULL
$$;

-- PATCH /v1/folders/{id}: rename (p_name not NULL) and/or move (p_move: under p_parent, NULL = the root).
-- outcome: 'updated' (out_folder), 'not_found', 'parent_not_found', 'cycle', 'too_deep', 'too_large', 'full',
-- 'name_taken'. A move rewrites the ancestors of every descendant folder (live or trashed: they stay in the tree) in
-- one statement; more than p_subtree_max descendant folders refuse it. Deadlocks are impossible by the lock order
-- above among these routes, but uploads and other writers lock files and folders in their own order: one detected
-- deadlock is retried.
CREATE FUNCTION fm_folder_update(p_owner uuid, p_folder uuid, p_name text, p_move boolean, p_parent uuid,
                                 p_rename boolean, p_subtree_max integer, p_entries_max integer)
RETURNS TABLE (outcome text, out_folder json)
LANGUAGE plpgsql AS $$
DECLARE
    f folders;
    target_chain uuid[] := '{}';
    new_parent uuid;
    new_name text;
    old_depth integer;
    descendants integer;
    deepest integer;
    tries integer := 0;
BEGIN
    LOOP
        BEGIN
            -- lock: the folder, and for a move the target's chain, all in one sorted statement
            SELECT * INTO f FROM fm_folder_for(p_owner, p_folder) WHERE deleted_at IS NULL;
            IF NOT FOUND THEN
                RETURN QUERY SELECT 'not_found', NULL::json;
                RETURN;
            END IF;
            target_chain := '{}';
            IF p_move AND p_parent IS NOT NULL THEN
                IF p_parent = p_folder THEN
                    RETURN QUERY SELECT 'cycle', NULL::json;
                    RETURN;
                END IF;
                PERFORM fm_folder_lock_tree(p_owner, p_folder, p_parent);
                SELECT ancestors || id INTO target_chain FROM fm_folder_for(p_owner, p_parent)
                    WHERE deleted_at IS NULL;
                IF NOT FOUND THEN
                    RETURN QUERY SELECT 'parent_not_found', NULL::json;
                    RETURN;
                END IF;
            ELSIF p_move THEN
                PERFORM fm_folder_lock_tree(p_owner, p_folder, NULL);
            ELSE
                PERFORM fm_folder_lock_chain(ARRAY[p_folder], false); -- a rename changes the folder's row only
            END IF;
            -- re-read what is locked
            SELECT * INTO f FROM fm_folder_for(p_owner, p_folder) WHERE deleted_at IS NULL;
            IF NOT FOUND THEN
                RETURN QUERY SELECT 'not_found', NULL::json;
                RETURN;
            END IF;
            new_parent := CASE WHEN p_move THEN p_parent ELSE f.parent_id END;
            IF NOT p_move THEN -- a rename keeps the folder's place
                target_chain := f.ancestors;
            END IF;
            new_name := coalesce(p_name, f.name);
            IF new_parent IS NOT DISTINCT FROM f.parent_id AND new_name = f.name THEN
                RETURN QUERY SELECT 'updated', fm_folder_json(f.id); -- nothing to change
                RETURN;
            END IF;
            IF new_parent IS DISTINCT FROM f.parent_id THEN
                IF p_folder = ANY (target_chain) THEN -- the target is the folder or one of its descendants
                    RETURN QUERY SELECT 'cycle', NULL::json;
                    RETURN;
                END IF;
                SELECT count(*), coalesce(max(cardinality(d.ancestors)), 0) INTO descendants, deepest
                    FROM (SELECT ancestors FROM folders WHERE ancestors @> ARRAY[p_folder] AND owner_id = p_owner
                          LIMIT p_subtree_max + 1) d;
                IF descendants > p_subtree_max THEN
                    RETURN QUERY SELECT 'too_large', NULL::json;
                    RETURN;
                END IF;
                old_depth := cardinality(f.ancestors);
                -- the folder's depth becomes cardinality(target_chain); each descendant moves by the difference
                IF cardinality(target_chain) >= 32
                   OR (descendants > 0 AND deepest - old_depth + cardinality(target_chain) >= 32) THEN
                    RETURN QUERY SELECT 'too_deep', NULL::json;
                    RETURN;
                END IF;
                IF fm_folder_full(p_owner, new_parent, p_entries_max) THEN
                    RETURN QUERY SELECT 'full', NULL::json;
                    RETURN;
                END IF;
            END IF;
            LOOP
                IF p_rename THEN
                    new_name := fm_free_name(p_owner, new_parent, coalesce(p_name, f.name));
                END IF;
                BEGIN
                    UPDATE folders SET name = new_name, parent_id = new_parent, ancestors = target_chain,
                                       updated_at = now(), version = version + 1
                        WHERE id = p_folder;
                    EXIT;
                EXCEPTION WHEN unique_violation THEN
                    IF NOT p_rename THEN
                        RETURN QUERY SELECT 'name_taken', NULL::json;
                        RETURN;
                    END IF;
                END;
            END LOOP;
            IF new_parent IS DISTINCT FROM f.parent_id THEN
                -- every descendant: the new path of the folder, then its own part below the folder
                UPDATE folders SET ancestors = target_chain || ancestors[cardinality(f.ancestors) + 1:]
                    WHERE ancestors @> ARRAY[p_folder] AND owner_id = p_owner;
            END IF;
            RETURN QUERY SELECT 'updated', fm_folder_json(p_folder);
            RETURN;
        EXCEPTION WHEN deadlock_detected THEN
            tries := tries + 1;
            IF tries > 2 THEN
                RAISE;
            END IF;
        END;
    END LOOP;
END $$;

-- DELETE /v1/folders/{id}: the subtree to the trash in one transaction. Rows that are live get deleted_at = now()
-- and trashed_with = the folder; rows already in the trash keep theirs. outcome 'trashed', 'in_trash' (nothing
-- changes; the rows returned are those the folder's trash took, so a repeated DELETE repairs Redis), 'not_found' or
-- 'too_large' (more than p_max entries: folders plus live files). Then one row per file the trash took (out_file):
-- its blob (NULL if none) and the blob's keys; one row per blob of those files (out_file NULL, out_sha256 set):
-- whether the owner still holds a live READY file on it (the dedupe index keeps it) and the purge_edge job made when
-- no live file points at it any more; and a last row with neither.
CREATE FUNCTION fm_folder_trash(p_owner uuid, p_folder uuid, p_max integer)
RETURNS TABLE (outcome text, out_file uuid, out_sha256 text, out_keys jsonb, out_owner_holds boolean,
               out_purge_job uuid)
LANGUAGE plpgsql AS $$
DECLARE
    f folders;
    entries integer;
    was_live boolean;
    subtree uuid[];
BEGIN
    SELECT * INTO f FROM fm_folder_for(p_owner, p_folder);
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'not_found', NULL::uuid, NULL::text, NULL::jsonb, NULL::boolean, NULL::uuid;
        RETURN;
    END IF;
    PERFORM fm_folder_lock_tree(p_owner, p_folder, NULL);
    SELECT * INTO f FROM fm_folder_for(p_owner, p_folder);
    was_live := f.deleted_at IS NULL;
    IF was_live THEN
        SELECT array_agg(id) INTO subtree FROM (
            SELECT id FROM folders WHERE id = p_folder
            UNION ALL
            SELECT id FROM folders WHERE ancestors @> ARRAY[p_folder] AND owner_id = p_owner LIMIT p_max + 1) s;
        IF cardinality(subtree) > p_max THEN
            RETURN QUERY SELECT 'too_large', NULL::uuid, NULL::text, NULL::jsonb, NULL::boolean, NULL::uuid;
            RETURN;
        END IF;
        SELECT cardinality(subtree) + count(*) INTO entries FROM (
            SELECT 1 FROM files WHERE folder_id = ANY (subtree) AND deleted_at IS NULL LIMIT p_max + 1) c;
        IF entries > p_max THEN
            RETURN QUERY SELECT 'too_large', NULL::uuid, NULL::text, NULL::jsonb, NULL::boolean, NULL::uuid;
            RETURN;
        END IF;
        UPDATE folders SET deleted_at = now(), trashed_with = p_folder, updated_at = now(), version = version + 1
            WHERE id = ANY (subtree) AND deleted_at IS NULL;
        UPDATE files SET deleted_at = now(), trashed_with = p_folder, updated_at = now(), version = version + 1
            WHERE folder_id = ANY (subtree) AND deleted_at IS NULL;
    END IF;
    -- the blobs of the files the trash took, locked in order after the files (fm_file_trash's order)
    PERFORM 1 FROM (SELECT b.sha256 FROM blobs b
                    WHERE b.sha256 IN (SELECT blob_sha256 FROM files WHERE trashed_with = p_folder
                                       AND blob_sha256 IS NOT NULL)
                    ORDER BY b.sha256 FOR NO KEY UPDATE) l;
    -- One row per file (its keys) and one per blob (the index entry and the job), never a join of the two sets: the
    -- rows just trashed are not in the statistics yet, and the planner joined such sets by nested loops, files ×
    -- blobs (9,000 × 1,000: 3.7 s of a 10,000-entry trash).
    RETURN QUERY
    SELECT CASE WHEN was_live THEN 'trashed' ELSE 'in_trash' END, t.id, encode(b.sha256, 'hex'),
           CASE WHEN b.sha256 IS NOT NULL THEN fm_blob_keys(b.storage_key, b.variants) END, NULL::boolean, NULL::uuid
    FROM files t LEFT JOIN blobs b ON b.sha256 = t.blob_sha256
    WHERE t.trashed_with = p_folder AND t.owner_id = p_owner;
    RETURN QUERY
    SELECT CASE WHEN was_live THEN 'trashed' ELSE 'in_trash' END, NULL::uuid, encode(b.sha256, 'hex'), NULL::jsonb,
           EXISTS (SELECT 1 FROM files o WHERE o.blob_sha256 = b.sha256 AND o.deleted_at IS NULL
                   AND o.owner_id = p_owner AND o.status = 'READY'),
           CASE WHEN was_live AND NOT EXISTS (SELECT 1 FROM files o WHERE o.blob_sha256 = b.sha256
                                               AND o.deleted_at IS NULL)
                THEN fm_purge_job(b.sha256, b.storage_key, 'delete', NULL) END
    FROM blobs b
    WHERE b.sha256 IN (SELECT blob_sha256 FROM files WHERE trashed_with = p_folder AND owner_id = p_owner);
    RETURN QUERY SELECT CASE WHEN was_live THEN 'trashed' ELSE 'in_trash' END, NULL::uuid, NULL::text, NULL::jsonb,
                        NULL::boolean, NULL::uuid;
END $$;

-- POST /v1/folders/{id}/restore: brings back exactly the rows whose trashed_with is the folder. The folder goes back
-- under its parent when that parent is live (under fm_free_name's name if a live sibling took its name meanwhile),
-- else at the root (ancestors of the whole subtree rewritten as a move does). outcome 'restored' (out_folder; one row
-- per file brought back: its blob's keys, whether the file is public and READY; one row per blob a READY file came
-- back on, out_file NULL: its size),
-- 'not_deleted' (a live folder), 'expired' (trashed longer than p_retention_s), 'not_found' (not the owner's, or
-- trashed with an ancestor: restore that one).
CREATE FUNCTION fm_folder_restore(p_owner uuid, p_folder uuid, p_retention_s integer)
RETURNS TABLE (outcome text, out_folder json, out_file uuid, out_sha256 text, out_keys jsonb, out_public boolean,
               out_ready_size bigint)
LANGUAGE plpgsql AS $$
DECLARE
    f folders;
    parent_chain uuid[];
    new_parent uuid;
    new_anc uuid[] := '{}';
BEGIN
    SELECT * INTO f FROM fm_folder_for(p_owner, p_folder);
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'not_found', NULL::json, NULL::uuid, NULL::text, NULL::jsonb, NULL::boolean, NULL::bigint;
        RETURN;
    END IF;
    -- the subtree and the parent's chain (it must not move or go to the trash while the subtree comes back under it)
    PERFORM fm_folder_lock_tree(p_owner, p_folder, f.parent_id);
    SELECT * INTO f FROM fm_folder_for(p_owner, p_folder);
    SELECT ancestors INTO parent_chain FROM fm_folder_for(p_owner, f.parent_id) WHERE deleted_at IS NULL;
    IF f.deleted_at IS NULL THEN
        RETURN QUERY SELECT 'not_deleted', fm_folder_json(f.id), NULL::uuid, NULL::text, NULL::jsonb, NULL::boolean,
                            NULL::bigint;
        RETURN;
    END IF;
    IF f.trashed_with IS DISTINCT FROM f.id THEN -- trashed with an ancestor (or before this migration's routes)
        IF f.trashed_with IS NOT NULL THEN
            RETURN QUERY SELECT 'not_found', NULL::json, NULL::uuid, NULL::text, NULL::jsonb, NULL::boolean,
                                NULL::bigint;
            RETURN;
        END IF;
    END IF;
    IF f.deleted_at < now() - make_interval(secs => p_retention_s) THEN
        RETURN QUERY SELECT 'expired', NULL::json, NULL::uuid, NULL::text, NULL::jsonb, NULL::boolean, NULL::bigint;
        RETURN;
    END IF;
    IF parent_chain IS NOT NULL THEN
        new_parent := f.parent_id;
        new_anc := parent_chain || f.parent_id;
    END IF;
    IF new_anc IS DISTINCT FROM f.ancestors THEN -- back at the root: the subtree's paths start there now
        UPDATE folders SET ancestors = new_anc || ancestors[cardinality(f.ancestors) + 1:]
            WHERE ancestors @> ARRAY[p_folder] AND owner_id = p_owner;
    END IF;
    UPDATE folders SET deleted_at = NULL, trashed_with = NULL, updated_at = now(), version = version + 1,
                       parent_id = new_parent, ancestors = new_anc,
                       name = fm_free_name(p_owner, new_parent, f.name)
        WHERE id = p_folder;
    -- the rest of the subtree comes back with the names it had: nothing but this restore can have placed a name in
    -- a folder that was in the trash
    UPDATE folders SET deleted_at = NULL, trashed_with = NULL, updated_at = now(), version = version + 1
        WHERE trashed_with = p_folder AND owner_id = p_owner;
    PERFORM 1 FROM (SELECT id FROM files WHERE trashed_with = p_folder AND owner_id = p_owner
                    ORDER BY id FOR UPDATE) l;
    PERFORM 1 FROM (SELECT b.sha256 FROM blobs b
                    WHERE b.sha256 IN (SELECT blob_sha256 FROM files WHERE trashed_with = p_folder
                                       AND blob_sha256 IS NOT NULL)
                    ORDER BY b.sha256 FOR NO KEY UPDATE) l;
    -- one row per file (every file: a file without a blob has a revocation mark and a cached row too) and one per
    -- blob a READY file came back on (its size for the owner's dedupe index): never the two sets joined (see
    -- fm_folder_trash)
    RETURN QUERY
    WITH back AS (
        UPDATE files t SET deleted_at = NULL, trashed_with = NULL, updated_at = now(), version = t.version + 1
        WHERE t.trashed_with = p_folder AND t.owner_id = p_owner
        RETURNING t.id, t.blob_sha256, t.visibility, t.status)
    SELECT 'restored', NULL::json, k.id, encode(b.sha256, 'hex'),
           CASE WHEN b.sha256 IS NOT NULL THEN fm_blob_keys(b.storage_key, b.variants) END,
           b.sha256 IS NOT NULL AND k.visibility = 'public' AND k.status = 'READY', NULL::bigint
    FROM back k LEFT JOIN blobs b ON b.sha256 = k.blob_sha256
    UNION ALL
    SELECT 'restored', NULL::json, NULL::uuid, encode(b.sha256, 'hex'), NULL::jsonb, false, b.size
    FROM blobs b WHERE b.sha256 IN (SELECT blob_sha256 FROM back WHERE status = 'READY');
    RETURN QUERY SELECT 'restored', fm_folder_json(p_folder), NULL::uuid, NULL::text, NULL::jsonb, NULL::boolean,
                        NULL::bigint;
END $$;
