/*
 * The fuzz targets' reference reading of S3 XML: the raw text of the first <tag>…</tag>, found with memmem only, so
 * the library's own parser is checked against something that shares none of its code.
 */
#ifndef FM_FUZZ_REF_XML_H
#define FM_FUZZ_REF_XML_H

#include <stdio.h>
#include <string.h>

/* The first <tag>…</tag> in [xml, xml + len): its text and, if `after` is not NULL, the offset just past its
 * closing tag. 0 if there is none. */
static inline int ref_element(const char *xml, size_t len, const char *tag, const char **text, size_t *text_len,
                              size_t *after)
{
    char open[32], close[32];
    size_t open_len = (size_t)snprintf(open, sizeof open, "<%s>", tag);
    size_t close_len = (size_t)snprintf(close, sizeof close, "</%s>", tag);
    const char *start = memmem(xml, len, open, open_len);
    if (start == NULL)
        return 0;
    start += open_len;
    const char *end = memmem(start, len - (size_t)(start - xml), close, close_len);
    if (end == NULL)
        return 0;
    *text = start;
    *text_len = (size_t)(end - start);
    if (after != NULL)
        *after = (size_t)(end - xml) + close_len;
    return 1;
}

#endif
