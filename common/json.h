/*
 * Rules every reader of JSON from outside applies after cJSON parsed it (fm_req_json_body for request bodies,
 * fm_s3event_parse for S3 event messages). Pure functions over a parsed tree: safe on any thread.
 */
#ifndef FM_JSON_H
#define FM_JSON_H

#include <cjson/cJSON.h>

/**
 * The first member name that appears twice in one object of `json`, at any depth (objects inside arrays too), or
 * NULL. Names are compared byte for byte after unescaping ("a" and "\u0061" are the same name). RFC 8259 §4 leaves
 * the meaning of a repeated name to each parser, and ours disagree: cJSON's lookup takes the first, PostgreSQL's
 * jsonb the last. So a JSON text with one is refused wherever it comes from outside, before anyone reads a member.
 * O(n log n) for an object of n members (pairwise without allocating up to 16); recursion depth is bounded by
 * cJSON's nesting limit (CJSON_NESTING_LIMIT, 1000). The returned name is borrowed from `json`.
 */
const char *fm_json_duplicate_key(const cJSON *json);

#endif /* FM_JSON_H */
