-- Names settled when a record written behind reaches PostgreSQL (issue 11 item 4; docs/decisions.md "Names and
-- conflicts (issue 11 items 1, 4)"). Since 012 a name already taken among the live siblings raises unique_violation on
-- entry_names_pkey. Only uploads with on_conflict=rename are written behind (the default, fail, is written through
-- and answers 409 name_taken), so a record in a flush batch that clashes takes fm_free_name's name instead: the
-- flush and fm_records_ensure's single insert never fail on a name.
--
-- fm_records_insert_set is the set-based insert the flushers used before (control-plane/records.c); fm_records_insert
-- runs it once for the whole batch and, only when a name clashed (with a live sibling or with another record of the
-- same batch), again record by record, each clashing one under fm_free_name's name. The fast path stays one
-- statement; the slow one costs a subtransaction per record of a batch that clashed.

CREATE FUNCTION fm_records_insert_set(p_records json, OUT files_inserted bigint, OUT uploads_inserted bigint)
LANGUAGE sql AS $$
    WITH r AS (
        SELECT t.* FROM json_to_recordset(p_records) AS t(kind text, upload_id uuid, file_id uuid, owner uuid,
            name text, size bigint, type text, sha256 text, key text, expires bigint, created bigint)
        WHERE EXISTS (SELECT 1 FROM users u WHERE u.id = t.owner)),
    -- which (owner, blob) pairs of the batch's dedupes still hold: once per pair, not once per row
    held AS (
        SELECT DISTINCT r.owner, b.sha256, b.size FROM r JOIN blobs b ON b.sha256 = decode(r.sha256, 'hex') AND b.size = r.size
        WHERE r.kind = 'dedupe' AND EXISTS (SELECT 1 FROM files o WHERE o.owner_id = r.owner
            AND o.blob_sha256 = b.sha256 AND o.status = 'READY' AND o.deleted_at IS NULL)),
    f AS (
        INSERT INTO files (id, owner_id, name, size, content_type, claimed_sha256, blob_sha256, status,
                           status_reason, created_at, updated_at)
        SELECT r.file_id, r.owner, r.name, r.size, r.type, decode(r.sha256, 'hex'), b.sha256,
            (CASE WHEN r.kind = 'upload' THEN 'PENDING_UPLOAD' WHEN b.sha256 IS NOT NULL THEN 'READY'
                  ELSE 'FAILED' END)::file_status,
            CASE WHEN r.kind = 'dedupe' AND b.sha256 IS NULL THEN 'the deduplicated content is no longer stored' END,
            to_timestamp(r.created / 1000.0), to_timestamp(r.created / 1000.0)
        FROM r LEFT JOIN held b ON r.kind = 'dedupe' AND b.owner = r.owner AND b.sha256 = decode(r.sha256, 'hex')
            AND b.size = r.size
        ON CONFLICT (id) DO NOTHING RETURNING id),
    u AS (
        INSERT INTO uploads (id, file_id, owner_id, object_key, size, content_type, claimed_sha256, method,
                             expires_at, created_at)
        SELECT r.upload_id, r.file_id, r.owner, r.key, r.size, r.type, decode(r.sha256, 'hex'), 'PUT',
            to_timestamp(r.expires), to_timestamp(r.created / 1000.0)
        FROM r WHERE r.kind = 'upload' ON CONFLICT (id) DO NOTHING RETURNING id)
    SELECT (SELECT count(*) FROM f), (SELECT count(*) FROM u)
$$;

-- fm_free_name (012) searching from the n-th candidate on: a batch of many records of one name (a client uploading
-- "image.jpg" a thousand times) numbers them in one walk instead of one walk from "image.jpg" per record, which
-- would cost the square of their count. fm_free_name keeps its rule and its answers: it is this from 0.
CREATE FUNCTION fm_free_name_from(p_owner uuid, p_parent uuid, p_name text, p_from integer,
                                  OUT name text, OUT n integer)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    dot integer := length(p_name) - position('.' IN reverse(p_name)) + 1;
    stem text := p_name;
    ext text := '';
BEGIN
    IF position('.' IN p_name) > 0 AND dot > 1 AND dot < length(p_name) THEN
        stem := left(p_name, dot - 1);
        ext := substr(p_name, dot);
    END IF;
    n := greatest(p_from, 0);
    LOOP
        IF n = 0 THEN
            name := p_name;
        ELSE
            name := stem || ' (' || n || ')' || ext;
            WHILE octet_length(name) > 255 AND length(stem) > 1 LOOP
                stem := left(stem, length(stem) - 1);
                name := stem || ' (' || n || ')' || ext;
            END LOOP;
        END IF;
        PERFORM 1 FROM entry_names e WHERE e.owner_id = p_owner AND e.parent_key = fm_parent_key(p_parent)
                                       AND e.name = fm_free_name_from.name;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        n := n + 1;
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION fm_free_name(p_owner uuid, p_parent uuid, p_name text) RETURNS text
LANGUAGE sql STABLE AS $$ SELECT name FROM fm_free_name_from(p_owner, p_parent, p_name, 0) $$;

CREATE FUNCTION fm_records_insert(p_records json, OUT files_inserted bigint, OUT uploads_inserted bigint)
LANGUAGE plpgsql AS $$
DECLARE
    rec jsonb;
    asked text;
    key text;
    free record;
    next_n jsonb := '{}';  -- owner/name asked → the number to search from (this batch numbered up to it already)
    f bigint;
    u bigint;
    tries integer;
    violated text;
BEGIN
    BEGIN
        SELECT s.files_inserted, s.uploads_inserted INTO files_inserted, uploads_inserted
            FROM fm_records_insert_set(p_records) s;
        RETURN;
    EXCEPTION WHEN unique_violation THEN
        GET STACKED DIAGNOSTICS violated = CONSTRAINT_NAME;
        IF violated IS DISTINCT FROM 'entry_names_pkey' THEN
            RAISE;
        END IF;
    END;
    files_inserted := 0;
    uploads_inserted := 0;
    FOR rec IN SELECT value FROM jsonb_array_elements(p_records::jsonb) LOOP
        tries := 0;
        asked := rec->>'name';
        key := (rec->>'owner') || '/' || asked;
        IF next_n ? key THEN  -- an earlier record of this batch had the name: number this one at once
            -- records written behind have no folder (a folder upload is written through): the parent is the root
            free := fm_free_name_from((rec->>'owner')::uuid, NULL, asked, (next_n->>key)::integer);
            rec := jsonb_set(rec, '{name}', to_jsonb(free.name));
            next_n := jsonb_set(next_n, ARRAY[key], to_jsonb(free.n + 1));
        END IF;
        LOOP
            BEGIN
                SELECT s.files_inserted, s.uploads_inserted INTO f, u
                    FROM fm_records_insert_set(jsonb_build_array(rec)::json) s;
                files_inserted := files_inserted + f;
                uploads_inserted := uploads_inserted + u;
                IF NOT next_n ? key THEN
                    next_n := jsonb_set(next_n, ARRAY[key], to_jsonb(1));
                END IF;
                EXIT;
            EXCEPTION WHEN unique_violation THEN
                GET STACKED DIAGNOSTICS violated = CONSTRAINT_NAME;
                -- Another transaction (a batch of another flusher) may hold the free name uncommitted: once it
                -- committed, ask again for the name the client asked for ("a (2).txt", never "a (1) (1).txt"),
                -- boundedly.
                IF violated IS DISTINCT FROM 'entry_names_pkey' OR tries >= 16 THEN
                    RAISE;
                END IF;
                tries := tries + 1;
                free := fm_free_name_from((rec->>'owner')::uuid, NULL, asked,
                                          coalesce((next_n->>key)::integer, 1));
                rec := jsonb_set(rec, '{name}', to_jsonb(free.name));
                next_n := jsonb_set(next_n, ARRAY[key], to_jsonb(free.n + 1));
            END;
        END LOOP;
    END LOOP;
END $$;
