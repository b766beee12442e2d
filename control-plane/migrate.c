/*
 * `fm-control migrate`: applies schema/NNN_name.sql in order, each once, each in its own transaction, recorded in
 * schema_migrations with its SHA-256 (an applied file that changed afterwards is an error, not a silent skip).
 * A session advisory lock lets several instances start at once. Blocking libpq is fine here: this is a CLI step,
 * not an event loop.
 */
#include <dirent.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "b64.h"
#include "control.h"

#define MIGRATION_LOCK "7403100"

static int is_migration_name(const char *name)
{
    size_t len = strlen(name);
    return len > 8 && name[0] >= '0' && name[0] <= '9' && name[1] >= '0' && name[1] <= '9' && name[2] >= '0' &&
           name[2] <= '9' && name[3] == '_' && strcmp(name + len - 4, ".sql") == 0;
}

static int select_migration(const struct dirent *entry)
{
    return is_migration_name(entry->d_name);
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    char *text = NULL;
    size_t cap = 0, used = 0, n;
    char chunk[8192];
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        if (used + n + 1 > cap) {
            cap = (used + n + 1) * 2;
            char *grown = realloc(text, cap);
            if (grown == NULL) {
                free(text);
                fclose(f);
                return NULL;
            }
            text = grown;
        }
        memcpy(text + used, chunk, n);
        used += n;
    }
    fclose(f);
    if (text == NULL && (text = calloc(1, 1)) == NULL)
        return NULL;
    text[used] = '\0';
    *len = used;
    return text;
}

static int exec_ok(PGconn *conn, const char *sql, const char *what)
{
    PGresult *res = PQexec(conn, sql);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK || PQresultStatus(res) == PGRES_TUPLES_OK;
    if (!ok)
        fprintf(stderr, "migrate: %s: %s", what, PQresultErrorMessage(res));
    PQclear(res);
    return ok ? 0 : -1;
}

/* Applies one file unless it is recorded; returns 1 applied, 0 already there, -1 error. */
static int apply_one(PGconn *conn, const char *dir, const char *name)
{
    char path[1024], version[8], digest_hex[65];
    unsigned char digest[32];
    size_t len = 0;
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    snprintf(version, sizeof(version), "%.3s", name);
    char *sql = read_file(path, &len);
    if (sql == NULL) {
        fprintf(stderr, "migrate: cannot read %s\n", path);
        return -1;
    }
    EVP_Digest(sql, len, digest, NULL, EVP_sha256(), NULL);
    fm_hex_encode(digest, sizeof(digest), digest_hex, sizeof(digest_hex));

    const char *params[] = {version};
    PGresult *res = PQexecParams(conn, "SELECT sha256 FROM schema_migrations WHERE version = $1::integer", 1, NULL,
                                 params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        fprintf(stderr, "migrate: %s", PQresultErrorMessage(res));
        PQclear(res);
        free(sql);
        return -1;
    }
    if (PQntuples(res) == 1) {
        int same = strcmp(PQgetvalue(res, 0, 0), digest_hex) == 0;
        PQclear(res);
        free(sql);
        if (!same) {
            fprintf(stderr, "migrate: %s was applied with other contents; write a new migration instead\n", name);
            return -1;
        }
        return 0;
    }
    PQclear(res);

    int rc = -1;
    if (exec_ok(conn, "BEGIN", "begin") == 0 && exec_ok(conn, sql, name) == 0) {
        const char *record[] = {version, name, digest_hex};
        res = PQexecParams(conn, "INSERT INTO schema_migrations (version, name, sha256) VALUES ($1::integer, $2, $3)",
                           3, NULL, record, NULL, NULL, 0);
        if (PQresultStatus(res) == PGRES_COMMAND_OK && exec_ok(conn, "COMMIT", "commit") == 0)
            rc = 1;
        else
            fprintf(stderr, "migrate: recording %s: %s", name, PQresultErrorMessage(res));
        PQclear(res);
    }
    if (rc != 1)
        exec_ok(conn, "ROLLBACK", "rollback");
    free(sql);
    return rc;
}

int fm_migrate(const char *conninfo, const char *schema_dir)
{
    PGconn *conn = PQconnectdb(conninfo);
    if (PQstatus(conn) != CONNECTION_OK) {
        fprintf(stderr, "migrate: cannot connect: %s", PQerrorMessage(conn));
        PQfinish(conn);
        return -1;
    }
    struct dirent **entries = NULL;
    int count = scandir(schema_dir, &entries, select_migration, alphasort);
    if (count < 0) {
        fprintf(stderr, "migrate: cannot list %s\n", schema_dir);
        PQfinish(conn);
        return -1;
    }
    int rc = 0, applied = 0;
    if (exec_ok(conn, "SELECT pg_advisory_lock(" MIGRATION_LOCK ")", "lock") != 0 ||
        exec_ok(conn,
                "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
                "sha256 text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
                "schema_migrations") != 0)
        rc = -1;
    for (int i = 0; i < count; ++i) {
        if (rc == 0) {
            int one = apply_one(conn, schema_dir, entries[i]->d_name);
            if (one < 0)
                rc = -1;
            else if (one == 1) {
                applied++;
                printf("migrate: applied %s\n", entries[i]->d_name);
            }
        }
        free(entries[i]);
    }
    free(entries);
    exec_ok(conn, "SELECT pg_advisory_unlock(" MIGRATION_LOCK ")", "unlock");
    PQfinish(conn);
    if (rc == 0)
        printf("migrate: %d applied, %d total\n", applied, count);
    return rc;
}
