-- Listing (issue 11 item 2; docs/decisions.md "Listing (issue 11 item 2)"): GET /v1/files?folder=&sort=&order=
-- reads one folder's live entries in keyset order, so each sort has an index whose columns are exactly the ORDER BY
-- after the equality prefix (owner, folder key): a page is an index range scan from the cursor, LIMIT n + 1, whatever
-- the page's depth (never OFFSET). Scanned backwards for order=desc.
--
--   * The folder key is fm_parent_key(folder_id) (schema/012: the root is the nil UUID), so the root is a value
--     like any folder and "folder = $2" is one equality for both.
--   * Names sort case-insensitively and stably: lower(name), then the exact name, then the id, each compared
--     bytewise (COLLATE "C": the order does not depend on the server's locale, a client can reproduce it, and it is
--     the cheapest comparison). lower() itself is the database's (immutable for the index).
--   * The other sorts tie-break on id.
--   * The type filter (type=image|…) is fm_type_family(content_type): the family of the type/subtype, parameters
--     ignored ("text/plain; charset=utf-8" is text). It filters the same index scan; it is not an index column, so
--     the unfiltered listing (the common case) keeps the narrowest index.

CREATE FUNCTION fm_type_family(p_content_type text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN t LIKE 'image/%' THEN 'image'
        WHEN t LIKE 'video/%' THEN 'video'
        WHEN t LIKE 'audio/%' THEN 'audio'
        WHEN t = 'application/pdf' THEN 'pdf'
        WHEN t LIKE 'text/%' THEN 'text'
        ELSE 'other' END
    FROM (SELECT lower(btrim(split_part(p_content_type, ';', 1), E' \t')) AS t) essence
$$;

CREATE INDEX files_list_name_idx ON files
    (owner_id, fm_parent_key(folder_id), (lower(name) COLLATE "C"), (name COLLATE "C"), id) WHERE deleted_at IS NULL;
CREATE INDEX files_list_created_idx ON files
    (owner_id, fm_parent_key(folder_id), created_at, id) WHERE deleted_at IS NULL;
CREATE INDEX files_list_updated_idx ON files
    (owner_id, fm_parent_key(folder_id), updated_at, id) WHERE deleted_at IS NULL;
CREATE INDEX files_list_size_idx ON files
    (owner_id, fm_parent_key(folder_id), size, id) WHERE deleted_at IS NULL;

-- Folders: by name (also the order of folders under sort=size: a folder has no size), created_at, updated_at.
CREATE INDEX folders_list_name_idx ON folders
    (owner_id, fm_parent_key(parent_id), (lower(name) COLLATE "C"), (name COLLATE "C"), id) WHERE deleted_at IS NULL;
CREATE INDEX folders_list_created_idx ON folders
    (owner_id, fm_parent_key(parent_id), created_at, id) WHERE deleted_at IS NULL;
CREATE INDEX folders_list_updated_idx ON folders
    (owner_id, fm_parent_key(parent_id), updated_at, id) WHERE deleted_at IS NULL;
