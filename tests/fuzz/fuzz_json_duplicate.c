/*
 * Fuzz target for common/json.c: fm_json_duplicate_key, the check every JSON text from outside passes after cJSON
 * parsed it (request bodies in fm_req_json_body, S3 event messages in fm_s3event_parse).
 *
 * The input is a JSON text; when cJSON parses it, the tree is checked. Invariants:
 *  - a duplicate is reported exactly when an independent walk finds one: each object's member names compared
 *    pairwise (O(n^2), no sorting, no size threshold), objects visited breadth-first rather than depth-first;
 *  - the name reported is a member name of the tree that occurs at least twice in one object;
 *  - the tree is not changed (printed before and after: the same text).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz_json_duplicate: invariant failed at line %d: %s\n", __LINE__, #cond);                \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

/* How many times `name` is a member name in one object (the largest count over all objects). */
static int times_in_one_object(const cJSON *item, const char *name)
{
    int most = 0;
    if (cJSON_IsObject(item)) {
        int here = 0;
        for (const cJSON *m = item->child; m != NULL; m = m->next)
            here += m->string != NULL && strcmp(m->string, name) == 0;
        most = here;
    }
    if (cJSON_IsObject(item) || cJSON_IsArray(item))
        for (const cJSON *c = item->child; c != NULL; c = c->next) {
            int below = times_in_one_object(c, name);
            most = below > most ? below : most;
        }
    return most;
}

/* Breadth-first over a queue of nodes; pairwise names in each object. */
static int ref_has_duplicate(const cJSON *root)
{
    size_t cap = 64, head = 0, tail = 0;
    const cJSON **queue = malloc(cap * sizeof(*queue));
    queue[tail++] = root;
    int found = 0;
    while (head < tail && !found) {
        const cJSON *node = queue[head++];
        if (cJSON_IsObject(node))
            for (const cJSON *a = node->child; a != NULL && !found; a = a->next)
                for (const cJSON *b = a->next; b != NULL && !found; b = b->next)
                    found = strcmp(a->string, b->string) == 0;
        if (cJSON_IsObject(node) || cJSON_IsArray(node))
            for (const cJSON *c = node->child; c != NULL; c = c->next) {
                if (tail == cap)
                    queue = realloc(queue, (cap *= 2) * sizeof(*queue));
                queue[tail++] = c;
            }
    }
    free(queue);
    return found;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size > 0 ? size : 1);
    memcpy(text, data, size);
    cJSON *json = cJSON_ParseWithLength(text, size);
    free(text);
    if (json == NULL)
        return 0;
    char *before = cJSON_PrintUnformatted(json);
    const char *dup = fm_json_duplicate_key(json);
    CHECK((dup != NULL) == ref_has_duplicate(json));
    if (dup != NULL)
        CHECK(times_in_one_object(json, dup) >= 2);
    char *after = cJSON_PrintUnformatted(json);
    CHECK((before == NULL) == (after == NULL) && (before == NULL || strcmp(before, after) == 0));
    cJSON_free(before);
    cJSON_free(after);
    cJSON_Delete(json);
    return 0;
}
