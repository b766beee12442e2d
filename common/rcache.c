/* Tracked per-thread copies of Redis values: see rcache.h. */
#include "rcache.h"

#include <stdlib.h>
#include <string.h>

#include "hash.h"
#include "metrics.h"
#include "server.h"

typedef struct {
    uint64_t hash;
    uint64_t flush; /* the cache's flush count when stored: an older one is empty */
    uint64_t stored_ns;
    char *key, *value; /* one allocation: key\0value\0; value NULL: the key does not exist (fm_rcache_keep_absent) */
    size_t key_len, value_len;
} slot_t;

struct fm_rcache {
    fm_redis_t *redis;
    slot_t *slots;
    size_t slot_count, value_max;
    uint64_t max_age_ns;
    uint64_t flush;   /* increased by "anything may have changed": every slot is empty at once */
    uint64_t forgets; /* fm_rcache_forget calls: a GET sent before one is not kept */
    int keep_absent;  /* a GET answered nil is kept too, as "no such key" */
};

typedef struct {
    fm_rcache_t *cache;
    fm_redis_cb cb;
    void *data;
    int tracked;
    uint64_t epoch, forgets;
    size_t key_len;
    char key[]; /* NUL-terminated */
} fetch_t;

static slot_t *slot_of(fm_rcache_t *c, uint64_t hash)
{
    return &c->slots[hash % c->slot_count];
}

static int slot_holds(const fm_rcache_t *c, const slot_t *s, uint64_t hash, const char *key, size_t len)
{
    return s->key != NULL && s->flush == c->flush && s->hash == hash && s->key_len == len &&
           memcmp(s->key, key, len) == 0;
}

static void slot_clear(slot_t *s)
{
    free(s->key);
    memset(s, 0, sizeof(*s));
}

static void on_invalidate(const char *key, size_t len, void *data)
{
    fm_rcache_t *c = data;
    if (key == NULL) {
        ++c->flush;
        FM_METRICS_COUNT("fm_rcache_invalidations_total", "scope=\"all\"", 1);
        return;
    }
    uint64_t hash = fm_fnv1a(key, len, 0);
    slot_t *s = slot_of(c, hash);
    if (slot_holds(c, s, hash, key, len)) {
        slot_clear(s);
        FM_METRICS_COUNT("fm_rcache_invalidations_total", "scope=\"key\"", 1);
    }
}

fm_rcache_t *fm_rcache_create(h2o_loop_t *loop, const char *host, int port, const char *password, int db,
                              uint64_t timeout_ms, size_t slots, size_t value_max, uint64_t max_age_ms)
{
    if (slots == 0 || value_max == 0 || max_age_ms == 0)
        return NULL;
    fm_rcache_t *c = calloc(1, sizeof(*c));
    if (c == NULL || (c->slots = calloc(slots, sizeof(*c->slots))) == NULL) {
        free(c);
        return NULL;
    }
    c->slot_count = slots;
    c->value_max = value_max;
    c->max_age_ns = max_age_ms * 1000000u;
    c->redis = fm_redis_create_tracking(loop, host, port, password, db, 1, timeout_ms, on_invalidate, c);
    if (c->redis == NULL) {
        free(c->slots);
        free(c);
        return NULL;
    }
    return c;
}

int fm_rcache_get(fm_rcache_t *c, const char *key, const char **value, size_t *len)
{
    uint64_t epoch;
    if (!fm_redis_tracked(c->redis, &epoch)) /* takes in the reports received so far, whatever it answers */
        return 0;
    size_t key_len = strlen(key);
    uint64_t hash = fm_fnv1a(key, key_len, 0);
    slot_t *s = slot_of(c, hash);
    if (!slot_holds(c, s, hash, key, key_len) || fm_now_ns() - s->stored_ns > c->max_age_ns) {
        FM_METRICS_COUNT("fm_rcache_lookups_total", "result=\"miss\"", 1);
        return 0;
    }
    FM_METRICS_COUNT("fm_rcache_lookups_total", "result=\"hit\"", 1);
    *value = s->value;
    *len = s->value_len;
    return 1;
}

/* Keeps `value` (NULL: the key does not exist) for `key`. */
static void store(fm_rcache_t *c, const char *key, size_t key_len, const char *value, size_t value_len)
{
    uint64_t hash = fm_fnv1a(key, key_len, 0);
    slot_t *s = slot_of(c, hash);
    char *buf = malloc(key_len + value_len + 2);
    if (buf == NULL)
        return;
    slot_clear(s);
    memcpy(buf, key, key_len);
    buf[key_len] = '\0';
    if (value != NULL)
        memcpy(buf + key_len + 1, value, value_len);
    buf[key_len + 1 + value_len] = '\0';
    *s = (slot_t){.hash = hash, .flush = c->flush, .stored_ns = fm_now_ns(), .key = buf, .key_len = key_len,
                  .value = value != NULL ? buf + key_len + 1 : NULL, .value_len = value_len};
}

static void on_fetched(redisReply *reply, const char *errstr, void *data)
{
    fetch_t *f = data;
    fm_rcache_t *c = f->cache;
    uint64_t epoch;
    /* Kept only if no report arrived since the GET left on a tracked connection (a report may concern this very
     * key, changed after Redis answered; after this point Redis reports its changes). */
    int keep = reply != NULL && ((reply->type == REDIS_REPLY_STRING && reply->len <= c->value_max) ||
                                 (reply->type == REDIS_REPLY_NIL && c->keep_absent));
    if (keep && f->tracked && fm_redis_tracked(c->redis, &epoch) && epoch == f->epoch && c->forgets == f->forgets)
        store(c, f->key, f->key_len, reply->type == REDIS_REPLY_STRING ? reply->str : NULL,
              reply->type == REDIS_REPLY_STRING ? reply->len : 0);
    f->cb(reply, errstr, f->data);
    free(f);
}

int fm_rcache_fetch(fm_rcache_t *c, const char *key, fm_redis_cb cb, void *data)
{
    size_t key_len = strlen(key);
    fetch_t *f = malloc(sizeof(*f) + key_len + 1);
    if (f == NULL)
        return -1;
    *f = (fetch_t){.cache = c, .cb = cb, .data = data, .key_len = key_len};
    memcpy(f->key, key, key_len + 1);
    f->tracked = fm_redis_tracked(c->redis, &f->epoch);
    f->forgets = c->forgets;
    const char *argv[] = {"GET", f->key};
    const size_t argvlen[] = {3, key_len};
    if (fm_redis_commandargv(c->redis, on_fetched, f, 2, argv, argvlen) != 0) {
        free(f);
        return -1;
    }
    return 0;
}

void fm_rcache_keep_absent(fm_rcache_t *c)
{
    c->keep_absent = 1;
}

void fm_rcache_forget(fm_rcache_t *c, const char *key)
{
    if (c == NULL)
        return;
    ++c->forgets;
    size_t len = strlen(key);
    uint64_t hash = fm_fnv1a(key, len, 0);
    slot_t *s = slot_of(c, hash);
    if (slot_holds(c, s, hash, key, len))
        slot_clear(s);
}

size_t fm_rcache_connected(fm_rcache_t *c)
{
    uint64_t epoch;
    return c != NULL && fm_redis_tracked(c->redis, &epoch);
}

void fm_rcache_destroy(fm_rcache_t *c)
{
    if (c == NULL)
        return;
    fm_redis_destroy(c->redis); /* before the slots: pending fetches still refer to the cache */
    for (size_t i = 0; i < c->slot_count; ++i)
        slot_clear(&c->slots[i]);
    free(c->slots);
    free(c);
}
