/*
 * The edge's disk cache: one data file and one metadata sidecar per object in FM_EDGE_CACHE_DIR, named by the
 * SHA-256 of the object key ("<hex>.data", "<hex>.meta"), with an in-memory index (hash table + LRU list) shared
 * by every loop thread under one mutex.
 *
 * Crash safety: a fill writes "<hex>.<n>.tmp", flushes it, renames it to .data, then writes the sidecar the same
 * way. At start, temp files are deleted, and a .data without a matching .meta (or of another size) is deleted
 * too; so a crash at any point loses at most the object being written, never serves half of one.
 *
 * Eviction removes the files of the least recently used objects while the total exceeds the cap. A request that
 * already opened an evicted or purged file keeps reading it (POSIX unlink semantics). An object larger than
 * fm_edge_cache_object_max() is never indexed (origin.c passes it through instead of filling it).
 *
 * Memory tier: the bytes of small objects (≤ FM_EDGE_MEMORY_OBJECT_MAX) are read into a reference-counted blob at
 * their second hit and kept while they stay among the most recently used within FM_EDGE_MEMORY_BYTES, so a hot
 * thumbnail or a small file is answered without open/fstat/pread/close. A blob is the file's bytes, checked
 * against the indexed size when read; eviction and purge drop the index's reference, and answers still sending it
 * hold their own.
 */
#include <dirent.h>
#include <stdatomic.h>
#include <stddef.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "b64.h"
#include "edge.h"
#include "log.h"
#include "metrics.h"
#include "qs.h"
#include "sigv4.h"

struct fm_edge_blob {
    atomic_size_t refs;
    size_t size;
    unsigned char bytes[];
};

typedef struct entry entry_t;

/* The index's two recency lists are intrusive: an entry holds a link for each, and a list knows which is its. */
typedef struct {
    entry_t *prev, *next;
} link_t;

typedef struct {
    entry_t *head, *tail; /* head = most recently used */
    size_t link;          /* offsetof(entry_t, <its link>) */
} list_t;

struct entry {
    char hex[FM_EDGE_HEX_LEN + 1];
    fm_edge_meta_t meta;
    uint64_t serial; /* tells a reused entry address from the entry a blob was read for */
    struct entry *hash_next;
    link_t lru;           /* every entry */
    fm_edge_blob_t *blob; /* the bytes in memory (one reference), or NULL */
    link_t mem;           /* entries with a blob */
    int hits;             /* since indexed, up to 2: a blob is read at the second */
    int loading;          /* a thread is reading the blob */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char cache_dir[512];
static uint64_t cap_bytes, total_bytes, object_count, next_serial;
static entry_t **buckets;
static size_t bucket_count;
static list_t lru = {.link = offsetof(entry_t, lru)};
static uint64_t mem_cap, mem_object_max, mem_bytes, mem_objects;
static list_t mem_lru = {.link = offsetof(entry_t, mem)};

void fm_edge_cache_name(const char *key, size_t key_len, char hex[FM_EDGE_HEX_LEN + 1])
{
    unsigned char digest[32];
    fm_sha256(key, key_len, digest);
    fm_hex_encode(digest, sizeof(digest), hex, FM_EDGE_HEX_LEN + 1); /* every hit names its file: no printf here */
}

void fm_edge_cache_path(const char *hex, const char *suffix, char *out, size_t size)
{
    snprintf(out, size, "%s/%s%s", cache_dir, hex, suffix);
}

/* The hex name is already a uniform hash: its first 16 digits pick the bucket. */
static size_t bucket_of(const char *hex)
{
    uint64_t h = 0;
    for (int i = 0; i < 16; ++i)
        h = (h << 4) | (uint64_t)(fm_hex_digit(hex[i]) & 15);
    return (size_t)(h & (bucket_count - 1));
}

static entry_t *find(const char *hex)
{
    for (entry_t *e = buckets[bucket_of(hex)]; e != NULL; e = e->hash_next)
        if (memcmp(e->hex, hex, FM_EDGE_HEX_LEN) == 0)
            return e;
    return NULL;
}

static link_t *link_of(const list_t *list, entry_t *e)
{
    return (link_t *)((char *)e + list->link);
}

static void list_unlink(list_t *list, entry_t *e)
{
    link_t *link = link_of(list, e);
    if (link->prev != NULL)
        link_of(list, link->prev)->next = link->next;
    else
        list->head = link->next;
    if (link->next != NULL)
        link_of(list, link->next)->prev = link->prev;
    else
        list->tail = link->prev;
    link->prev = link->next = NULL;
}

static void list_push_front(list_t *list, entry_t *e)
{
    link_t *link = link_of(list, e);
    link->prev = NULL;
    link->next = list->head;
    if (list->head != NULL)
        link_of(list, list->head)->prev = e;
    list->head = e;
    if (list->tail == NULL)
        list->tail = e;
}

/* ---- memory tier ---- */

void fm_edge_blob_release(fm_edge_blob_t *blob)
{
    if (blob != NULL && atomic_fetch_sub_explicit(&blob->refs, 1, memory_order_acq_rel) == 1)
        free(blob);
}

const unsigned char *fm_edge_blob_bytes(const fm_edge_blob_t *blob)
{
    return blob->bytes;
}

/* Drops e's blob (answers sending it keep theirs); caller holds the lock. */
static void mem_drop(entry_t *e)
{
    if (e->blob == NULL)
        return;
    list_unlink(&mem_lru, e);
    mem_bytes -= e->blob->size;
    mem_objects--;
    fm_edge_blob_release(e->blob);
    e->blob = NULL;
}

/* Gives e the blob (the index's reference), dropping the least recently used blobs beyond the cap. */
static void mem_attach(entry_t *e, fm_edge_blob_t *blob)
{
    e->blob = blob;
    list_push_front(&mem_lru, e);
    mem_bytes += blob->size;
    mem_objects++;
    while (mem_bytes > mem_cap && mem_lru.tail != NULL)
        mem_drop(mem_lru.tail);
}

/* Reads the whole data file on `fd` into a new blob (one reference), or NULL if it is not `size` bytes. */
static fm_edge_blob_t *blob_read(int fd, uint64_t size)
{
    fm_edge_blob_t *blob = malloc(sizeof(*blob) + (size_t)size);
    if (blob == NULL)
        return NULL;
    atomic_init(&blob->refs, 1);
    blob->size = (size_t)size;
    size_t got = 0;
    while (got < size) {
        ssize_t n = pread(fd, blob->bytes + got, (size_t)size - got, (off_t)got);
        if (n == -1 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    char extra;
    if (got != size || pread(fd, &extra, 1, (off_t)size) != 0) {
        free(blob);
        return NULL;
    }
    return blob;
}

static void grow(void)
{
    size_t old_count = bucket_count;
    entry_t **old = buckets;
    bucket_count = old_count == 0 ? 1024 : old_count * 2;
    if ((buckets = calloc(bucket_count, sizeof(*buckets))) == NULL)
        h2o_fatal("out of memory");
    for (size_t i = 0; i < old_count; ++i) {
        for (entry_t *e = old[i], *next; e != NULL; e = next) {
            next = e->hash_next;
            size_t b = bucket_of(e->hex);
            e->hash_next = buckets[b];
            buckets[b] = e;
        }
    }
    free(old);
}

static void insert(entry_t *e)
{
    if (object_count + 1 > bucket_count)
        grow();
    size_t b = bucket_of(e->hex);
    e->hash_next = buckets[b];
    buckets[b] = e;
    e->serial = ++next_serial;
    list_push_front(&lru, e);
    total_bytes += e->meta.size;
    object_count++;
}

/* Unlinks e from the index and deletes its files; caller holds the lock. */
static void remove_entry(entry_t *e)
{
    for (entry_t **p = &buckets[bucket_of(e->hex)]; *p != NULL; p = &(*p)->hash_next) {
        if (*p == e) {
            *p = e->hash_next;
            break;
        }
    }
    list_unlink(&lru, e);
    mem_drop(e);
    total_bytes -= e->meta.size;
    object_count--;
    char path[640];
    fm_edge_cache_path(e->hex, ".meta", path, sizeof(path));
    unlink(path); /* the sidecar first: a .data alone is cleaned at the next start */
    fm_edge_cache_path(e->hex, ".data", path, sizeof(path));
    unlink(path);
    free(e);
}

static void evict_over_cap(void)
{
    while (total_bytes > cap_bytes && lru.tail != NULL) {
        remove_entry(lru.tail);
        FM_METRICS_COUNT("fm_edge_evictions_total", NULL, 1);
    }
}

/* ---- sidecar ---- */

static void strip_controls(char *s)
{
    for (; *s != '\0'; ++s)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            *s = ' ';
}

static int write_meta(const char *hex, const fm_edge_meta_t *meta)
{
    char tmp[640], path[640];
    snprintf(tmp, sizeof(tmp), "%s/%s.meta.%lu.tmp", cache_dir, hex, (unsigned long)pthread_self());
    fm_edge_cache_path(hex, ".meta", path, sizeof(path));
    FILE *f = fopen(tmp, "w");
    if (f == NULL)
        return -1;
    fprintf(f, "fm-edge-meta 1\nkey=%s\nsize=%llu\netag=%s\ntype=%s\nstored=%lld\n", meta->key,
            (unsigned long long)meta->size, meta->etag, meta->content_type, (long long)meta->stored_at);
    int bad = fflush(f) != 0 || fdatasync(fileno(f)) != 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

static int read_meta(const char *path, fm_edge_meta_t *meta)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    char line[FM_EDGE_CACHE_KEY_MAX + 64];
    int have_key = 0, have_size = 0, ok = fgets(line, sizeof(line), f) != NULL && strcmp(line, "fm-edge-meta 1\n") == 0;
    memset(meta, 0, sizeof(*meta));
    while (ok && fgets(line, sizeof(line), f) != NULL) {
        size_t len = strlen(line);
        if (len == 0 || line[len - 1] != '\n') {
            ok = 0;
            break;
        }
        line[len - 1] = '\0';
        char *eq = strchr(line, '=');
        if (eq == NULL)
            continue;
        *eq = '\0';
        const char *value = eq + 1;
        if (strcmp(line, "key") == 0 && strlen(value) > 0 && strlen(value) <= FM_EDGE_CACHE_KEY_MAX) {
            strcpy(meta->key, value);
            have_key = 1;
        } else if (strcmp(line, "size") == 0) {
            meta->size = strtoull(value, NULL, 10);
            have_size = 1;
        } else if (strcmp(line, "etag") == 0) {
            snprintf(meta->etag, sizeof(meta->etag), "%s", value);
        } else if (strcmp(line, "type") == 0) {
            snprintf(meta->content_type, sizeof(meta->content_type), "%s", value);
        } else if (strcmp(line, "stored") == 0) {
            meta->stored_at = (time_t)strtoll(value, NULL, 10);
        }
    }
    fclose(f);
    return ok && have_key && have_size ? 0 : -1;
}

/* ---- start: rebuild the index ---- */

static int by_stored_at(const void *a, const void *b)
{
    const entry_t *x = *(entry_t *const *)a, *y = *(entry_t *const *)b;
    return (x->meta.stored_at > y->meta.stored_at) - (x->meta.stored_at < y->meta.stored_at);
}

static int is_hex_name(const char *name)
{
    for (int i = 0; i < FM_EDGE_HEX_LEN; ++i)
        if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f')))
            return 0;
    return 1;
}

int fm_edge_cache_open(const char *dir, uint64_t max_bytes, uint64_t memory_bytes, uint64_t memory_object_max)
{
    snprintf(cache_dir, sizeof(cache_dir), "%s", dir);
    cap_bytes = max_bytes;
    mem_cap = memory_bytes;
    mem_object_max = memory_object_max;
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        fm_error("cannot create the cache folder %s: %s", dir, strerror(errno));
        return -1;
    }
    DIR *d = opendir(dir);
    if (d == NULL) {
        fm_error("cannot open the cache folder %s: %s", dir, strerror(errno));
        return -1;
    }
    grow();
    entry_t **found = NULL;
    size_t found_count = 0, found_cap = 0, removed = 0;
    struct dirent *de;
    char path[640];
    while ((de = readdir(d)) != NULL) {
        const char *name = de->d_name;
        size_t len = strlen(name);
        if (name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, name);
        if (len > 4 && strcmp(name + len - 4, ".tmp") == 0) { /* a fill cut by a crash */
            unlink(path);
            ++removed;
            continue;
        }
        if (len != FM_EDGE_HEX_LEN + 5 || !is_hex_name(name) || strcmp(name + FM_EDGE_HEX_LEN, ".data") != 0)
            continue; /* sidecars are read with their data; anything else is not ours */
        entry_t *e = calloc(1, sizeof(*e));
        if (e == NULL)
            h2o_fatal("out of memory");
        memcpy(e->hex, name, FM_EDGE_HEX_LEN);
        char meta_path[640], check[FM_EDGE_HEX_LEN + 1];
        fm_edge_cache_path(e->hex, ".meta", meta_path, sizeof(meta_path));
        struct stat st;
        int valid = stat(path, &st) == 0 && read_meta(meta_path, &e->meta) == 0 && (uint64_t)st.st_size == e->meta.size;
        if (valid) {
            fm_edge_cache_name(e->meta.key, strlen(e->meta.key), check);
            valid = memcmp(check, e->hex, FM_EDGE_HEX_LEN) == 0;
        }
        if (!valid) {
            unlink(meta_path);
            unlink(path);
            free(e);
            ++removed;
            continue;
        }
        if (found_count == found_cap) {
            found_cap = found_cap ? found_cap * 2 : 256;
            if ((found = realloc(found, found_cap * sizeof(*found))) == NULL)
                h2o_fatal("out of memory");
        }
        found[found_count++] = e;
    }
    closedir(d);
    /* Oldest first, so the most recently stored ends at the LRU head. */
    if (found_count > 0)
        qsort(found, found_count, sizeof(*found), by_stored_at);
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < found_count; ++i)
        insert(found[i]);
    evict_over_cap();
    pthread_mutex_unlock(&lock);
    free(found);
    fm_info("edge cache %s: %llu objects, %llu bytes (cap %llu); %zu broken or temporary files removed", dir,
            (unsigned long long)object_count, (unsigned long long)total_bytes, (unsigned long long)cap_bytes, removed);
    return 0;
}

void fm_edge_cache_close(void)
{
    pthread_mutex_lock(&lock);
    for (entry_t *e = lru.head, *next; e != NULL; e = next) {
        next = e->lru.next;
        fm_edge_blob_release(e->blob);
        free(e);
    }
    mem_lru.head = mem_lru.tail = NULL;
    mem_bytes = mem_objects = 0;
    free(buckets);
    buckets = NULL;
    bucket_count = 0;
    lru.head = lru.tail = NULL;
    total_bytes = object_count = 0;
    pthread_mutex_unlock(&lock);
}

int fm_edge_cache_hit(const char *hex, fm_edge_meta_t *meta, int *fd, fm_edge_blob_t **blob)
{
    *fd = -1;
    if (blob != NULL)
        *blob = NULL;
    pthread_mutex_lock(&lock);
    entry_t *e = find(hex);
    if (e == NULL) {
        pthread_mutex_unlock(&lock);
        return 0;
    }
    list_unlink(&lru, e);
    list_push_front(&lru, e);
    *meta = e->meta;
    if (blob != NULL && e->blob != NULL) {
        list_unlink(&mem_lru, e);
        list_push_front(&mem_lru, e);
        atomic_fetch_add_explicit(&e->blob->refs, 1, memory_order_relaxed);
        *blob = e->blob;
        pthread_mutex_unlock(&lock);
        return 1;
    }
    /* Opened under the lock so a concurrent eviction cannot slip between lookup and open (a memory hit, above,
     * needs no file name: it is made only here). */
    char path[640];
    fm_edge_cache_path(hex, ".data", path, sizeof(path));
    *fd = open(path, O_RDONLY | O_CLOEXEC);
    if (e->hits < 2)
        e->hits++;
    int load = blob != NULL && *fd != -1 && e->blob == NULL && !e->loading && e->hits >= 2 && mem_cap > 0 &&
               e->meta.size <= mem_object_max && e->meta.size <= mem_cap;
    uint64_t serial = e->serial, size = e->meta.size;
    if (load)
        e->loading = 1;
    pthread_mutex_unlock(&lock);
    if (*fd == -1)
        return 0;
    if (!load)
        return 1;

    /* Read outside the lock; the entry may have been purged or replaced meanwhile (then the blob is not kept). */
    fm_edge_blob_t *loaded = blob_read(*fd, size);
    FM_METRICS_COUNT("fm_edge_memory_loads_total", NULL, 1);
    pthread_mutex_lock(&lock);
    e = find(hex);
    if (e != NULL && e->serial == serial) {
        e->loading = 0;
        if (loaded != NULL) {
            atomic_fetch_add_explicit(&loaded->refs, 1, memory_order_relaxed); /* this answer's */
            mem_attach(e, loaded);
            *blob = loaded;
        }
    } else if (loaded != NULL) {
        *blob = loaded; /* gone from the index: this answer alone sends what it read */
    }
    pthread_mutex_unlock(&lock);
    if (*blob != NULL) {
        close(*fd);
        *fd = -1;
    }
    return 1;
}

uint64_t fm_edge_cache_object_max(void)
{
    uint64_t max = fm_edge.cfg != NULL ? (uint64_t)fm_edge.cfg->edge_cache_object_max_bytes : 0;
    return max == 0 || max > cap_bytes ? cap_bytes / 2 > 0 ? cap_bytes / 2 : 1 : max;
}

int fm_edge_cache_publish(const char *hex, const char *tmp_path, const fm_edge_meta_t *meta)
{
    if (meta->size > fm_edge_cache_object_max()) {
        /* Too large to keep (a fill whose size the origin did not announce, or a render): served to those waiting from
         * the unlinked file, never indexed, so it can evict nothing -- least of all itself, which would make every
         * request fetch it again while emptying the cache. */
        int fd = open(tmp_path, O_RDONLY | O_CLOEXEC);
        unlink(tmp_path);
        return fd;
    }
    char path[640];
    fm_edge_cache_path(hex, ".data", path, sizeof(path));
    entry_t *e = calloc(1, sizeof(*e));
    if (e == NULL)
        h2o_fatal("out of memory");
    memcpy(e->hex, hex, FM_EDGE_HEX_LEN);
    e->meta = *meta;
    strip_controls(e->meta.etag);
    strip_controls(e->meta.content_type);

    pthread_mutex_lock(&lock);
    entry_t *old = find(hex);
    if (old != NULL) /* refilled after a purge raced with a hit: the new copy wins */
        remove_entry(old);
    int fd = -1;
    if (rename(tmp_path, path) == 0 && write_meta(hex, &e->meta) == 0)
        fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        fm_error("edge cache: cannot store %s: %s", hex, strerror(errno));
        unlink(path);
        unlink(tmp_path);
        free(e);
    } else {
        insert(e);
        evict_over_cap(); /* never e itself: it is at most the cap (fm_edge_cache_object_max) */
    }
    pthread_mutex_unlock(&lock);
    return fd;
}

/* An object's variants are cached under "key" + FM_EDGE_VARIANT_SEP + parameters: the prefix finds them all. */
size_t fm_edge_cache_purge_key(const char *key, size_t key_len)
{
    char hex[FM_EDGE_HEX_LEN + 1];
    fm_edge_cache_name(key, key_len, hex);
    pthread_mutex_lock(&lock);
    size_t purged = 0;
    entry_t *e = find(hex);
    if (e != NULL) {
        remove_entry(e);
        ++purged;
    }
    for (entry_t *v = lru.head, *next; v != NULL; v = next) {
        next = v->lru.next;
        if (strncmp(v->meta.key, key, key_len) == 0 && v->meta.key[key_len] == FM_EDGE_VARIANT_SEP) {
            remove_entry(v);
            ++purged;
        }
    }
    pthread_mutex_unlock(&lock);
    return purged;
}

size_t fm_edge_cache_purge_prefix(const char *prefix, size_t prefix_len)
{
    size_t purged = 0;
    pthread_mutex_lock(&lock);
    for (entry_t *e = lru.head, *next; e != NULL; e = next) {
        next = e->lru.next;
        if (strncmp(e->meta.key, prefix, prefix_len) == 0) {
            remove_entry(e);
            ++purged;
        }
    }
    pthread_mutex_unlock(&lock);
    return purged;
}

void fm_edge_cache_stats(fm_edge_cache_stats_t *stats)
{
    pthread_mutex_lock(&lock);
    stats->bytes = total_bytes;
    stats->objects = object_count;
    stats->memory_bytes = mem_bytes;
    stats->memory_objects = mem_objects;
    pthread_mutex_unlock(&lock);
}
