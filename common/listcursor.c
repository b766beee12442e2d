/*
 * listcursor: see listcursor.h.
 */
#include "listcursor.h"

#include <stdio.h>
#include <string.h>

#define VERSION "l2"
#define FIELDS 7
/* The scope: "list:" + two ids + ':' + NUL. An owner or folder with a ':' is refused: "a:b" + "c" and "a" + "b:c"
 * would be one scope. */
#define SCOPE_MAX (5 + 36 + 1 + 36 + 1)

_Static_assert(2 + 1 + 15 + 1 + 7 + 1 + 7 + 1 + 1 + 1 + 36 + 1 + FM_LIST_CURSOR_KEY_MAX <= FM_CURSOR_PAYLOAD_MAX,
               "the listing's payload must fit a cursor's");

/* A field that may go into the payload or scope: no '\n' (the payload's separator), at most `max` bytes (all but the
 * key: no empty). */
static int field_ok(const char *s, size_t max, int may_be_empty)
{
    size_t len = strnlen(s, max + 1);
    return len <= max && (may_be_empty || len > 0) && memchr(s, '\n', len) == NULL;
}

static int scope_of(const char *owner, const char *folder, char out[SCOPE_MAX])
{
    if (!field_ok(owner, 36, 0) || !field_ok(folder, 36, 0) || strchr(owner, ':') != NULL ||
        strchr(folder, ':') != NULL)
        return -1;
    snprintf(out, SCOPE_MAX, "list:%s:%s", owner, folder);
    return 0;
}

int fm_list_cursor_encode(const void *secret, size_t secret_len, const fm_list_cursor_t *c, char *out, size_t out_size)
{
    char scope[SCOPE_MAX];
    if (scope_of(c->owner, c->folder, scope) != 0 || !field_ok(c->sort, sizeof(c->sort) - 1, 0) ||
        !field_ok(c->order, sizeof(c->order) - 1, 0) || !field_ok(c->type, sizeof(c->type) - 1, 0) ||
        (c->phase != 'd' && c->phase != 'f') || strnlen(c->id, 37) != 36 || !field_ok(c->id, 36, 0) ||
        strnlen(c->key, FM_LIST_CURSOR_KEY_MAX + 1) > FM_LIST_CURSOR_KEY_MAX)
        return -1;
    char payload[FM_CURSOR_PAYLOAD_MAX + 1];
    int len = snprintf(payload, sizeof(payload), VERSION "\n%s\n%s\n%s\n%c\n%s\n%s", c->sort, c->order, c->type,
                       c->phase, c->id, c->key);
    if (len < 0 || (size_t)len > FM_CURSOR_PAYLOAD_MAX)
        return -1;
    return fm_cursor_sign(secret, secret_len, scope, payload, (size_t)len, out, out_size);
}

/* Copies the NUL-terminated field into dst (size bytes with the NUL); -1 if it does not fit. */
static int copy_field(char *dst, size_t size, const char *src, size_t exact)
{
    size_t len = strlen(src);
    if (len >= size || (exact && len != exact))
        return -1;
    memcpy(dst, src, len + 1);
    return 0;
}

int fm_list_cursor_decode(const void *secret, size_t secret_len, const char *owner, const char *folder,
                          const char *text, size_t len, fm_list_cursor_t *out)
{
    char scope[SCOPE_MAX], payload[FM_CURSOR_PAYLOAD_MAX + 1];
    size_t payload_len = 0;
    if (scope_of(owner, folder, scope) != 0 ||
        fm_cursor_open(secret, secret_len, scope, text, len, payload, sizeof(payload) - 1, &payload_len) != 0)
        return -1;
    /* Authentic, so made by fm_list_cursor_encode: still parsed as strictly as any input. */
    if (memchr(payload, '\0', payload_len) != NULL)
        return -1;
    payload[payload_len] = '\0';
    char *fields[FIELDS], *s = payload;
    for (int i = 0; i < FIELDS; ++i) {
        fields[i] = s;
        if (i < FIELDS - 1) {
            char *nl = strchr(s, '\n');
            if (nl == NULL)
                return -1;
            *nl = '\0';
            s = nl + 1;
        }
    }
    if (strcmp(fields[0], VERSION) != 0 || strlen(fields[4]) != 1 || (fields[4][0] != 'd' && fields[4][0] != 'f'))
        return -1;
    out->phase = fields[4][0];
    if (copy_field(out->owner, sizeof(out->owner), owner, 0) != 0 ||
        copy_field(out->folder, sizeof(out->folder), folder, 0) != 0 ||
        copy_field(out->sort, sizeof(out->sort), fields[1], 0) != 0 ||
        copy_field(out->order, sizeof(out->order), fields[2], 0) != 0 ||
        copy_field(out->type, sizeof(out->type), fields[3], 0) != 0 ||
        copy_field(out->id, sizeof(out->id), fields[5], 36) != 0 ||
        copy_field(out->key, sizeof(out->key), fields[6], 0) != 0)
        return -1;
    return 0;
}
