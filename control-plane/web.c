/*
 * The browser client (web/), served by fm-control at / so that the page and the API share an origin. The folder
 * (FM_WEB_DIR) is read once at start into memory: a handful of small files, answered without touching the disk on
 * an event loop. Paths are looked up in that table only, so nothing outside the folder can be named.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "control.h"
#include "log.h"

#define WEB_MAX_FILES 256
#define WEB_MAX_BYTES (16 * 1024 * 1024)

typedef struct {
    char path[256]; /* "/app.js" */
    const char *type;
    char *body;
    size_t len;
} web_file_t;

static web_file_t files[WEB_MAX_FILES];
static size_t file_count, total_bytes;
static char csp[512];

static const char *type_of(const char *name)
{
    static const char *const types[][2] = {
        {".html", "text/html; charset=utf-8"}, {".js", "text/javascript; charset=utf-8"},
        {".mjs", "text/javascript; charset=utf-8"}, {".css", "text/css; charset=utf-8"},
        {".svg", "image/svg+xml"}, {".png", "image/png"}, {".ico", "image/x-icon"},
        {".json", "application/json"}, {".txt", "text/plain; charset=utf-8"}, {".webmanifest", "application/manifest+json"},
    };
    const char *dot = strrchr(name, '.');
    for (size_t i = 0; dot != NULL && i < sizeof(types) / sizeof(types[0]); ++i)
        if (strcmp(dot, types[i][0]) == 0)
            return types[i][1];
    return NULL; /* anything else is not served */
}

static int load_dir(const char *root, const char *rel, int depth)
{
    char dir_path[768];
    snprintf(dir_path, sizeof(dir_path), "%s%s", root, rel);
    DIR *dir = opendir(dir_path);
    if (dir == NULL)
        return depth == 0 ? -1 : 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (entry->d_name[0] == '.')
            continue; /* also hides dotfiles */
        char rel_path[256], full[1024];
        if ((size_t)snprintf(rel_path, sizeof(rel_path), "%s/%s", rel, entry->d_name) >= sizeof(rel_path))
            continue;
        snprintf(full, sizeof(full), "%s%s", root, rel_path);
        struct stat st;
        if (stat(full, &st) != 0)
            continue;
        if (S_ISDIR(st.st_mode)) {
            if (depth < 3)
                load_dir(root, rel_path, depth + 1);
            continue;
        }
        const char *type = type_of(entry->d_name);
        if (!S_ISREG(st.st_mode) || type == NULL || file_count == WEB_MAX_FILES ||
            total_bytes + (size_t)st.st_size > WEB_MAX_BYTES)
            continue;
        FILE *f = fopen(full, "rb");
        char *body = f ? malloc((size_t)st.st_size + 1) : NULL;
        size_t len = body ? fread(body, 1, (size_t)st.st_size, f) : 0;
        if (f != NULL)
            fclose(f);
        if (body == NULL)
            continue;
        web_file_t *file = &files[file_count++];
        snprintf(file->path, sizeof(file->path), "%s", rel_path);
        file->type = type;
        file->body = body;
        file->len = len;
        total_bytes += len;
    }
    closedir(dir);
    return 0;
}

int fm_web_load(const char *dir)
{
    if (dir == NULL || dir[0] == '\0')
        return 0;
    if (load_dir(dir, "", 0) != 0) {
        fm_error("FM_WEB_DIR %s cannot be read", dir);
        return -1;
    }
    /* The page talks to the API (same origin) and PUTs to the S3 endpoint, nothing else. */
    snprintf(csp, sizeof(csp),
             "default-src 'self'; connect-src 'self' %s; img-src 'self' data: blob:; style-src 'self'; "
             "script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
             fm_control->config.s3_public_endpoint);
    fm_info("web: %zu files (%zu bytes) from %s", file_count, total_bytes, dir);
    return 0;
}

void handle_web(fm_req_t *r)
{
    h2o_iovec_t path = r->req->path_normalized;
    if (path.len == 1 && path.base[0] == '/')
        path = h2o_iovec_init(H2O_STRLIT("/index.html"));
    for (size_t i = 0; i < file_count; ++i) {
        web_file_t *file = &files[i];
        if (!h2o_memis(path.base, path.len, file->path, strlen(file->path)))
            continue;
        int html = strncmp(file->type, "text/html", 9) == 0;
        fm_req_add_header(r, "cache-control", html ? "no-cache" : "max-age=300");
        fm_req_add_header(r, "x-content-type-options", "nosniff");
        if (html) {
            fm_req_add_header(r, "content-security-policy", csp);
            fm_req_add_header(r, "referrer-policy", "no-referrer");
        }
        fm_reply_raw(r, 200, file->type, file->body, file->len);
        return;
    }
    fm_reply_error(r, 404, "not_found", "no such route");
}

void fm_web_free(void)
{
    for (size_t i = 0; i < file_count; ++i)
        free(files[i].body);
    file_count = total_bytes = 0;
}
