-- The entries bound of a folder (FM_FOLDER_ENTRIES_MAX, docs/decisions.md "Folders (issue 11 item 1)") on the paths
-- that put a FILE into a folder in PostgreSQL: an upload or a dedupe written through, a copy, a move (schema 013
-- checks it where folders are made and moved). fm_folder_full as a guard inside a statement: true, or the statement
-- fails with SQLSTATE FMF01, which the routes answer 422 folder_full. A record written behind (the root only, with
-- on_conflict=rename) is not counted before it lands: the flush cannot refuse what was already answered.
CREATE FUNCTION fm_folder_room(p_owner uuid, p_parent uuid, p_max integer) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF p_max > 0 AND fm_folder_full(p_owner, p_parent, p_max) THEN
        RAISE EXCEPTION 'the folder % of % already holds % entries', coalesce(p_parent::text, '(root)'), p_owner,
            p_max USING ERRCODE = 'FMF01';
    END IF;
    RETURN true;
END $$;
