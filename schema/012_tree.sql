-- The folder tree (issue 11 item 1; docs/decisions.md "The folder tree"). The shapes every later route builds on:
--
--   * folders.ancestors: the ids from the root down to the folder's parent ('{}' for a folder at the root), with a
--     GIN index, so "the subtree of F" is `F = id OR ancestors @> ARRAY[F]` without recursion. Sharing (a folder grant
--     covers its subtree) and search (filter by subtree) ask exactly that. A move rewrites the ancestors of the moved
--     folder's descendant folders in one statement.
--   * Files keep only folder_id: the files of a subtree are those whose folder is one of the subtree's folders. So a
--     move never rewrites file rows (a folder of 100,000 files moves in one statement over its folders), and the
--     write-behind insert of new files (records.c) needs no path.
--   * Trash of a folder takes its whole subtree in one transaction: every live row under it gets deleted_at and
--     trashed_with = the folder; restoring the folder brings back exactly the rows with its trashed_with (a file
--     trashed on its own before stays in the trash). An entry trashed on its own has trashed_with NULL.
--   * Names: one namespace per (owner, parent) shared by files and folders, live entries only, exact bytes
--     (case-sensitive, like the file systems and S3 keys). entry_names holds one row per live entry and its primary
--     key is the rule: triggers on files and folders keep it, so every path that places a name (a route, the
--     write-behind flush, a restore, a migration) is checked by the same index, race-free, and a clash is a
--     unique_violation on entry_names_pkey (the routes answer 409 name_taken, or pick fm_free_name's name).

ALTER TABLE folders ADD COLUMN ancestors uuid[] NOT NULL DEFAULT '{}';
ALTER TABLE folders ADD COLUMN deleted_at timestamptz;
ALTER TABLE folders ADD COLUMN trashed_with uuid;
ALTER TABLE folders ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE folders ADD COLUMN version bigint NOT NULL DEFAULT 1;
-- Bounded depth (docs/decisions.md "The folder tree"): a path of at most 32 folders below the root.
ALTER TABLE folders ADD CONSTRAINT folders_depth CHECK (cardinality(ancestors) < 32);
ALTER TABLE folders ADD CONSTRAINT folders_not_own_parent CHECK (parent_id IS DISTINCT FROM id);
ALTER TABLE files ADD COLUMN trashed_with uuid;

-- Existing folders (none are made by any route before this migration, but a deployment may hold rows): their paths.
WITH RECURSIVE p AS (
    SELECT id, '{}'::uuid[] AS path FROM folders WHERE parent_id IS NULL
    UNION ALL
    SELECT c.id, p.path || c.parent_id FROM folders c JOIN p ON c.parent_id = p.id)
UPDATE folders f SET ancestors = p.path FROM p WHERE p.id = f.id;

DROP INDEX folders_unique_name;
CREATE INDEX folders_ancestors_idx ON folders USING gin (ancestors);
CREATE INDEX folders_parent_idx ON folders (owner_id, parent_id) WHERE deleted_at IS NULL;
CREATE INDEX folders_trashed_with_idx ON folders (trashed_with) WHERE trashed_with IS NOT NULL;
CREATE INDEX files_folder_idx ON files (folder_id) WHERE folder_id IS NOT NULL;
CREATE INDEX files_trashed_with_idx ON files (trashed_with) WHERE trashed_with IS NOT NULL;
CREATE INDEX folders_trash_idx ON folders (deleted_at) WHERE deleted_at IS NOT NULL;

-- The root of every owner is this id in entry_names (NULL cannot be part of a primary key).
CREATE FUNCTION fm_parent_key(p_parent uuid) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT coalesce(p_parent, '00000000-0000-0000-0000-000000000000'::uuid) $$;

CREATE TABLE entry_names (
    owner_id    uuid NOT NULL,
    parent_key  uuid NOT NULL,            -- fm_parent_key(folder_id / parent_id)
    name        text NOT NULL,
    entry_id    uuid NOT NULL UNIQUE,     -- a file's or a folder's id (both are UUIDs, never equal)
    PRIMARY KEY (owner_id, parent_key, name)
);

-- Rows already live before this migration: a clash among them (possible: nothing checked names before) keeps the
-- oldest entry's name and gives the others fm_free_name's, as a rename would.
CREATE FUNCTION fm_free_name(p_owner uuid, p_parent uuid, p_name text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
-- The first of "name", "name (1).ext", "name (2).ext", … that no live sibling has. The extension is what follows
-- the last dot when that dot is neither the first nor the last byte ("archive.tar.gz" → "archive.tar (1).gz",
-- ".bashrc" → ".bashrc (1)"), as Dropbox and Nextcloud number copies. A candidate that would pass 255 bytes
-- shortens the stem (on a character boundary) instead of the suffix.
DECLARE
    dot integer := length(p_name) - position('.' IN reverse(p_name)) + 1;
    stem text := p_name;
    ext text := '';
    candidate text := p_name;
    n integer := 0;
BEGIN
    IF position('.' IN p_name) > 0 AND dot > 1 AND dot < length(p_name) THEN
        stem := left(p_name, dot - 1);
        ext := substr(p_name, dot);
    END IF;
    LOOP
        PERFORM 1 FROM entry_names WHERE owner_id = p_owner AND parent_key = fm_parent_key(p_parent)
                                     AND name = candidate;
        IF NOT FOUND THEN
            RETURN candidate;
        END IF;
        n := n + 1;
        candidate := stem || ' (' || n || ')' || ext;
        WHILE octet_length(candidate) > 255 AND length(stem) > 1 LOOP
            stem := left(stem, length(stem) - 1);
            candidate := stem || ' (' || n || ')' || ext;
        END LOOP;
    END LOOP;
END $$;

DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT 'folder' AS kind, id, owner_id, parent_id AS parent, name, created_at FROM folders
             UNION ALL
             SELECT 'file', id, owner_id, folder_id, name, created_at FROM files WHERE deleted_at IS NULL
             ORDER BY created_at, id LOOP
        INSERT INTO entry_names VALUES (r.owner_id, fm_parent_key(r.parent), r.name, r.id)
            ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            IF r.kind = 'folder' THEN
                UPDATE folders SET name = fm_free_name(r.owner_id, r.parent, r.name) WHERE id = r.id;
                INSERT INTO entry_names SELECT owner_id, fm_parent_key(parent_id), name, id FROM folders WHERE id = r.id;
            ELSE
                UPDATE files SET name = fm_free_name(r.owner_id, r.parent, r.name) WHERE id = r.id;
                INSERT INTO entry_names SELECT owner_id, fm_parent_key(folder_id), name, id FROM files WHERE id = r.id;
            END IF;
        END IF;
    END LOOP;
END $$;

-- The triggers keeping entry_names: an entry holds its name while it is live (deleted_at NULL). Generic over both
-- tables: TG_TABLE_NAME says which column is the parent.
CREATE FUNCTION fm_entry_names_sync() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    old_parent uuid;
    new_parent uuid;
BEGIN
    IF TG_TABLE_NAME = 'files' THEN
        IF TG_OP <> 'INSERT' THEN old_parent := OLD.folder_id; END IF;
        IF TG_OP <> 'DELETE' THEN new_parent := NEW.folder_id; END IF;
    ELSE
        IF TG_OP <> 'INSERT' THEN old_parent := OLD.parent_id; END IF;
        IF TG_OP <> 'DELETE' THEN new_parent := NEW.parent_id; END IF;
    END IF;
    IF TG_OP <> 'INSERT' AND OLD.deleted_at IS NULL THEN
        DELETE FROM entry_names WHERE entry_id = OLD.id;
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.deleted_at IS NULL THEN
        INSERT INTO entry_names VALUES (NEW.owner_id, fm_parent_key(new_parent), NEW.name, NEW.id);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER files_entry_names_ins AFTER INSERT ON files
    FOR EACH ROW WHEN (NEW.deleted_at IS NULL) EXECUTE FUNCTION fm_entry_names_sync();
CREATE TRIGGER files_entry_names_upd AFTER UPDATE OF name, folder_id, deleted_at, owner_id ON files
    FOR EACH ROW WHEN (OLD.name IS DISTINCT FROM NEW.name OR OLD.folder_id IS DISTINCT FROM NEW.folder_id
                       OR (OLD.deleted_at IS NULL) <> (NEW.deleted_at IS NULL) OR OLD.owner_id <> NEW.owner_id)
    EXECUTE FUNCTION fm_entry_names_sync();
CREATE TRIGGER files_entry_names_del AFTER DELETE ON files
    FOR EACH ROW WHEN (OLD.deleted_at IS NULL) EXECUTE FUNCTION fm_entry_names_sync();
CREATE TRIGGER folders_entry_names_ins AFTER INSERT ON folders
    FOR EACH ROW WHEN (NEW.deleted_at IS NULL) EXECUTE FUNCTION fm_entry_names_sync();
CREATE TRIGGER folders_entry_names_upd AFTER UPDATE OF name, parent_id, deleted_at, owner_id ON folders
    FOR EACH ROW WHEN (OLD.name IS DISTINCT FROM NEW.name OR OLD.parent_id IS DISTINCT FROM NEW.parent_id
                       OR (OLD.deleted_at IS NULL) <> (NEW.deleted_at IS NULL) OR OLD.owner_id <> NEW.owner_id)
    EXECUTE FUNCTION fm_entry_names_sync();
CREATE TRIGGER folders_entry_names_del AFTER DELETE ON folders
    FOR EACH ROW WHEN (OLD.deleted_at IS NULL) EXECUTE FUNCTION fm_entry_names_sync();

-- A file never leaves its folder silently: purging a folder deletes (or moves) its files first; before, the folder's
-- deletion set their folder_id to NULL, i.e. moved them to the root behind everyone's back.
ALTER TABLE files DROP CONSTRAINT files_folder_id_fkey;
ALTER TABLE files ADD CONSTRAINT files_folder_id_fkey FOREIGN KEY (folder_id) REFERENCES folders(id) ON DELETE RESTRICT;
