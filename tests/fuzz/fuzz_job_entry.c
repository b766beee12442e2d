/*
 * Fuzz target for fm_job_entry_parse (lambda-workers/queue.c), which reads each entry of the `jobs` stream as
 * XREADGROUP and XAUTOCLAIM answer it, `[id, [field, value, …]]`. Anyone who can XADD to the stream decides its
 * fields; the job id read here names the job that is locked, loaded and run.
 *
 * Input: RESP bytes as Redis sends them. hiredis' own reader (redisReaderCreate, the one redisCommand uses) turns
 * the first complete reply into a redisReply; nothing is parsed by hand here. Inputs declaring an array or string
 * of more than 65536 elements or bytes are skipped: hiredis 0.14 allocates what the header says, and the code under
 * test is the entry parser, not the reader.
 *
 * Invariants: rc is 0 or -1; on -1 the entry is all zero; on 0 it agrees with an independent reading of the reply
 * (walked here): the id is the first element's bytes (non-empty, < 64, no NUL), job_id and request_id are the value
 * of the last field named exactly so whose value is a string that fits with its NUL and holds none (else ""),
 * `reclaimed` is 0, and every string is NUL-terminated inside its buffer. rc is 0 exactly when the reply is a
 * two-element array of such an id and an array.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "queue.h"

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz_job_entry: invariant failed at line %d: %s\n", __LINE__, #cond);                     \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

#define MAX_DECLARED 65536

/* True when some `*N` or `$N` header line declares more than MAX_DECLARED. */
static int declares_too_much(const uint8_t *data, size_t size)
{
    for (size_t i = 0; i < size; i++) {
        if ((data[i] != '*' && data[i] != '$') || (i > 0 && data[i - 1] != '\n'))
            continue;
        unsigned long long n = 0;
        for (size_t j = i + 1; j < size && data[j] >= '0' && data[j] <= '9'; j++)
            if ((n = n * 10 + (unsigned)(data[j] - '0')) > MAX_DECLARED)
                return 1;
    }
    return 0;
}

static int has_nul(const char *s, size_t len)
{
    return memchr(s, '\0', len) != NULL;
}

/* The expected value of field `name`: the last match that fits, or NULL (then ""). */
static const redisReply *expected_field(const redisReply *fields, const char *name, size_t out_size)
{
    const redisReply *found = NULL;
    for (size_t i = 0; i + 1 < fields->elements; i += 2) {
        const redisReply *k = fields->element[i], *v = fields->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || k->len != strlen(name) || strncmp(k->str, name, k->len) != 0 ||
            has_nul(k->str, k->len))
            continue;
        if (v->type == REDIS_REPLY_STRING && v->len < out_size && !has_nul(v->str, v->len))
            found = v;
    }
    return found;
}

static void check_field(const char *got, size_t got_size, const redisReply *want)
{
    CHECK(memchr(got, '\0', got_size) != NULL);
    if (want == NULL) {
        CHECK(got[0] == '\0');
    } else {
        CHECK(strlen(got) == want->len && memcmp(got, want->str, want->len) == 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (declares_too_much(data, size))
        return 0;
    redisReader *reader = redisReaderCreate();
    CHECK(reader != NULL);
    void *reply_ptr = NULL;
    if (redisReaderFeed(reader, (const char *)data, size) != REDIS_OK ||
        redisReaderGetReply(reader, &reply_ptr) != REDIS_OK || reply_ptr == NULL) {
        redisReaderFree(reader);
        return 0;
    }
    const redisReply *reply = reply_ptr;

    fm_entry_t e;
    memset(&e, 0xa5, sizeof(e)); /* whatever was there: the parser must zero it */
    int rc = fm_job_entry_parse(reply, &e);
    CHECK(rc == 0 || rc == -1);

    int well_formed =
        reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 && reply->element[0]->type == REDIS_REPLY_STRING &&
        reply->element[0]->len > 0 && reply->element[0]->len < sizeof(e.id) &&
        !has_nul(reply->element[0]->str, reply->element[0]->len) && reply->element[1]->type == REDIS_REPLY_ARRAY;
    CHECK((rc == 0) == well_formed);

    if (rc != 0) {
        static const fm_entry_t zero;
        CHECK(memcmp(&e, &zero, sizeof(e)) == 0);
    } else {
        const redisReply *id = reply->element[0], *fields = reply->element[1];
        CHECK(strlen(e.id) == id->len && memcmp(e.id, id->str, id->len) == 0);
        check_field(e.job_id, sizeof(e.job_id), expected_field(fields, "job_id", sizeof(e.job_id)));
        check_field(e.request_id, sizeof(e.request_id), expected_field(fields, "request_id", sizeof(e.request_id)));
        CHECK(e.reclaimed == 0);
        if (fm_uuid_text_valid(e.job_id))
            CHECK(strlen(e.job_id) == 36);
    }
    freeReplyObject(reply_ptr);
    redisReaderFree(reader);
    return 0;
}
