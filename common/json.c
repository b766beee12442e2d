/* JSON input rules: see json.h. */
#include "json.h"

#include <stdlib.h>
#include <string.h>

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

#define SMALL_OBJECT 16

/* The first name that repeats among one object's members (not its children's), or NULL. */
static const char *object_duplicate(const cJSON *object)
{
    size_t count = 0;
    for (const cJSON *m = object->child; m != NULL; m = m->next)
        ++count;
    if (count <= SMALL_OBJECT) { /* the common case: a request body of a few fields, pairwise without allocating */
        for (const cJSON *a = object->child; a != NULL; a = a->next)
            for (const cJSON *b = a->next; b != NULL; b = b->next)
                if (a->string != NULL && b->string != NULL && strcmp(a->string, b->string) == 0)
                    return a->string;
        return NULL;
    }
    const char **names = malloc(count * sizeof(*names));
    if (names == NULL)
        abort(); /* out of memory: STYLE.md lets it abort */
    size_t n = 0;
    for (const cJSON *m = object->child; m != NULL; m = m->next)
        if (m->string != NULL)
            names[n++] = m->string;
    qsort(names, n, sizeof(*names), compare_names);
    const char *found = NULL;
    for (size_t i = 1; i < n && found == NULL; ++i)
        if (strcmp(names[i - 1], names[i]) == 0)
            found = names[i];
    free(names);
    return found;
}

/* Depth first, children in order: the first duplicate in document order of objects wins. */
const char *fm_json_duplicate_key(const cJSON *json)
{
    if (json == NULL)
        return NULL;
    if (cJSON_IsObject(json)) {
        const char *found = object_duplicate(json);
        if (found != NULL)
            return found;
    }
    if (cJSON_IsObject(json) || cJSON_IsArray(json))
        for (const cJSON *child = json->child; child != NULL; child = child->next) {
            const char *found = fm_json_duplicate_key(child);
            if (found != NULL)
                return found;
        }
    return NULL;
}
