/*
 * records_internal: what records.c (the request side of the records written behind) and records_flush.c (the
 * flushers) share: the Redis layout's key names, a record's fields, and the record as the insert's JSON.
 * Loop-thread only, like both files.
 */
#ifndef FM_RECORDS_INTERNAL_H
#define FM_RECORDS_INTERNAL_H

#include <stddef.h>

#include "redis.h"

/* A record's fields, as the insert reads them (HMGET in this order: a dedupe has no upload_id, key, expires). */
#define RECORD_FIELDS "kind", "upload_id", "file_id", "owner", "name", "size", "type", "sha256", "key", "expires", "created"
#define PENDING_KEY "fm:rec:pending"
#define FLUSHING_KEY "fm:rec:flushing"
#define LEASE_KEY "fm:rec:lease"

/** A growing NUL-terminated text (the JSON of a batch); base is malloc'd, free()d by its owner. */
typedef struct {
    char *base;
    size_t len, cap;
} fm_records_text_t;

/** Appends len bytes of s (exits on out of memory). */
void fm_records_text_add(fm_records_text_t *t, const char *s, size_t len);

/** Adds the record of an HMGET reply (RECORD_FIELDS) to the JSON array being written in `t` (opened by the caller
 *  with "[") as one object of strings, the missing fields left out; 0 if the reply holds none (the record is gone). */
int fm_records_json_add(fm_records_text_t *t, const redisReply *reply);

/** The file id of a record read by fm_records_json_add (which checked it is there), or NULL. */
const char *fm_records_file_id(const redisReply *reply);

/** The owner id of a record read by fm_records_json_add, or NULL (for fm_tree_changed once it is in PostgreSQL). */
const char *fm_records_owner_id(const redisReply *reply);

/** The size of a record read by fm_records_json_add, or 0 (for the owner's quota copy once it is in PostgreSQL). */
long long fm_records_size(const redisReply *reply);

/** One statement inserting a batch, $1 the JSON array of records; idempotent (ON CONFLICT DO NOTHING). */
extern const char fm_records_insert_sql[];

/** A Redis callback for commands whose answer nobody reads. */
void fm_records_ignore_reply(redisReply *reply, const char *errstr, void *data);

#endif
