-- Quotas (issue 11 item 6; docs/decisions.md "Quotas"). PostgreSQL keeps each owner's figures exact, Redis holds
-- the copy the presign script checks atomically (control-plane/quota.c).
--
-- What a file row costs its owner, by status: READY → used_bytes (a dedupe hit and a copy count in full: the owner
-- sees their size, whatever the storage shares); PENDING_UPLOAD, UPLOADED, PROCESSING → reserved_bytes (the presign
-- reserved it; READY turns it into usage); FAILED, QUARANTINED → nothing (abort, expiry, a refused upload release
-- it). A row in the trash still costs until it is purged (its row deleted). users.used_bytes (there since 001, never
-- maintained until now) and reserved_bytes follow every insert, status change and delete of files through the
-- statement triggers below: one UPDATE per owner per statement, so the write-behind flush's batch of thousands of
-- rows costs one aggregate, and the users rows are locked in id order (two batches with the same owners never
-- deadlock).

ALTER TABLE users ADD COLUMN reserved_bytes bigint NOT NULL DEFAULT 0 CHECK (reserved_bytes >= 0);

CREATE FUNCTION fm_used_part(p_status file_status, p_size bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT CASE WHEN p_status = 'READY' THEN p_size ELSE 0 END $$;
CREATE FUNCTION fm_reserved_part(p_status file_status, p_size bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_status IN ('PENDING_UPLOAD', 'UPLOADED', 'PROCESSING') THEN p_size ELSE 0 END
$$;

-- Applies per-owner deltas (a temp set of (owner, used, reserved)) in owner order.
CREATE FUNCTION fm_quota_apply(p_owners uuid[], p_used bigint[], p_reserved bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM users WHERE id = ANY (p_owners) ORDER BY id FOR NO KEY UPDATE;
    UPDATE users u SET used_bytes = greatest(u.used_bytes + d.used, 0),
                       reserved_bytes = greatest(u.reserved_bytes + d.reserved, 0)
    FROM unnest(p_owners, p_used, p_reserved) AS d(owner, used, reserved)
    WHERE u.id = d.owner AND (d.used <> 0 OR d.reserved <> 0);
END $$;

CREATE FUNCTION fm_quota_files_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    owners uuid[];
    used bigint[];
    reserved bigint[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(owner_id ORDER BY owner_id), array_agg(u ORDER BY owner_id), array_agg(r ORDER BY owner_id)
            INTO owners, used, reserved
        FROM (SELECT owner_id, sum(fm_used_part(status, size))::bigint AS u,
                     sum(fm_reserved_part(status, size))::bigint AS r
              FROM new_rows GROUP BY owner_id) d WHERE u <> 0 OR r <> 0;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(owner_id ORDER BY owner_id), array_agg(-u ORDER BY owner_id), array_agg(-r ORDER BY owner_id)
            INTO owners, used, reserved
        FROM (SELECT owner_id, sum(fm_used_part(status, size))::bigint AS u,
                     sum(fm_reserved_part(status, size))::bigint AS r
              FROM old_rows GROUP BY owner_id) d WHERE u <> 0 OR r <> 0;
    ELSE
        SELECT array_agg(owner_id ORDER BY owner_id), array_agg(u ORDER BY owner_id), array_agg(r ORDER BY owner_id)
            INTO owners, used, reserved
        FROM (SELECT owner_id, sum(u)::bigint AS u, sum(r)::bigint AS r FROM (
                  SELECT owner_id, fm_used_part(status, size) AS u, fm_reserved_part(status, size) AS r FROM new_rows
                  UNION ALL
                  SELECT owner_id, -fm_used_part(status, size), -fm_reserved_part(status, size) FROM old_rows) x
              GROUP BY owner_id) d WHERE u <> 0 OR r <> 0;
    END IF;
    IF owners IS NOT NULL THEN
        PERFORM fm_quota_apply(owners, used, reserved);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER files_quota_ins AFTER INSERT ON files REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION fm_quota_files_changed();
CREATE TRIGGER files_quota_upd AFTER UPDATE ON files REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION fm_quota_files_changed();
CREATE TRIGGER files_quota_del AFTER DELETE ON files REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION fm_quota_files_changed();

-- The figures recomputed from the rows (the reconciler's periodic recount, quota.c): the owners after p_after (id
-- order, NULL = from the first), at most p_limit of them; those whose counters differ from their rows get the rows'
-- figures (out_repaired); an owner whose row is locked by a charge in progress is skipped this time. Returns every
-- owner of the slice it recounted with its figures, so the caller can refresh their Redis
-- copies too, and the slice's last id in every row (NULL rows: no owner after p_after, start again).
CREATE FUNCTION fm_quota_recount(p_after uuid, p_limit integer)
RETURNS TABLE (out_owner uuid, out_used bigint, out_reserved bigint, out_quota bigint, out_repaired boolean,
               out_last uuid)
LANGUAGE plpgsql AS $$
DECLARE
    last uuid;
BEGIN
    SELECT s.id INTO last FROM (SELECT id FROM users WHERE p_after IS NULL OR id > p_after ORDER BY id
                                LIMIT p_limit) s ORDER BY s.id DESC LIMIT 1;
    IF last IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    -- SKIP LOCKED: an owner whose row a charge holds right now is left for the next round; waiting for it would
    -- keep the rows already locked here, and with them every charge of those owners, behind one long transaction
    WITH o AS (SELECT id FROM users WHERE (p_after IS NULL OR id > p_after) AND id <= last ORDER BY id
               FOR NO KEY UPDATE SKIP LOCKED),
         t AS (SELECT o.id, coalesce(sum(fm_used_part(f.status, f.size)), 0)::bigint AS used,
                      coalesce(sum(fm_reserved_part(f.status, f.size)), 0)::bigint AS reserved
               FROM o LEFT JOIN files f ON f.owner_id = o.id GROUP BY o.id),
         fixed AS (UPDATE users u SET used_bytes = t.used, reserved_bytes = t.reserved FROM t
                   WHERE u.id = t.id AND (u.used_bytes <> t.used OR u.reserved_bytes <> t.reserved)
                   RETURNING u.id)
    SELECT t.id, t.used, t.reserved, u.quota_bytes, t.id IN (SELECT id FROM fixed), last
    FROM t JOIN users u ON u.id = t.id;
END $$;

UPDATE users u SET used_bytes = t.used, reserved_bytes = t.reserved
FROM (SELECT owner_id, sum(fm_used_part(status, size))::bigint AS used,
             sum(fm_reserved_part(status, size))::bigint AS reserved FROM files GROUP BY owner_id) t
WHERE u.id = t.owner_id;

-- The check of every path that charges an owner in PostgreSQL (a write-through upload, an upload into a folder, a
-- multipart upload, a copy): whether used + reserved + p_extra fits the quota, with the owner's row locked until
-- the caller's transaction ends, so two such charges of one owner run one after the other and cannot both pass.
-- p_extra is the new row's size plus what Redis holds of the owner's records written behind (control-plane/quota.c).
CREATE FUNCTION fm_quota_fits(p_owner uuid, p_extra bigint) RETURNS boolean
LANGUAGE sql AS $$
    SELECT used_bytes + reserved_bytes + p_extra <= quota_bytes FROM users WHERE id = p_owner FOR NO KEY UPDATE
$$;

-- fm_quota_fits as a guard inside a statement: true, or the statement fails with SQLSTATE FMQ01, which the routes
-- answer 413 quota_exceeded (control-plane/quota.c). An owner that no longer exists passes: the insert then fails
-- on its own foreign key.
CREATE FUNCTION fm_quota_take(p_owner uuid, p_size bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF fm_quota_fits(p_owner, p_size) IS FALSE THEN
        RAISE EXCEPTION 'the quota of % would be passed by % bytes', p_owner, p_size USING ERRCODE = 'FMQ01';
    END IF;
    RETURN true;
END $$;
