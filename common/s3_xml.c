/* The XML of the S3 client (see s3.c): a minimal reader, the ListParts and ListObjectsV2 answers, the
 * CompleteMultipartUpload request body. */
#include "s3.h"
#include "qs.h"
#include "s3_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- minimal XML ------------------------------------------------------------------------------------------- */

/* Appends code point `cp` as UTF-8; returns bytes written or 0 if it does not fit or is not a scalar value. */
static size_t put_utf8(char *out, size_t room, unsigned long cp)
{
    unsigned char b[4];
    size_t n;
    if (cp == 0 || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
        return 0;
    if (cp < 0x80) {
        b[0] = (unsigned char)cp;
        n = 1;
    } else if (cp < 0x800) {
        b[0] = (unsigned char)(0xC0 | (cp >> 6));
        b[1] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        b[0] = (unsigned char)(0xE0 | (cp >> 12));
        b[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        b[2] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        b[0] = (unsigned char)(0xF0 | (cp >> 18));
        b[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
        b[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        b[3] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    if (n > room)
        return 0;
    memcpy(out, b, n);
    return n;
}

const char *fm_s3_find_bytes(const char *hay, size_t hay_len, const char *needle, size_t needle_len)
{
    if (needle_len == 0 || needle_len > hay_len)
        return NULL;
    for (size_t i = 0; i + needle_len <= hay_len; i++)
        if (hay[i] == needle[0] && memcmp(hay + i, needle, needle_len) == 0)
            return hay + i;
    return NULL;
}

/* The first complete <tag>…</tag> at or after `from`: its content is [*start, *end), *after follows the end tag. */
static int find_element(const char *xml, size_t len, const char *tag, size_t from, const char **start, const char **end,
                        size_t *after)
{
    char open[80], close[80];
    int open_len = snprintf(open, sizeof(open), "<%s>", tag);
    int close_len = snprintf(close, sizeof(close), "</%s>", tag);
    if (xml == NULL || tag == NULL || open_len <= 2 || (size_t)close_len >= sizeof(close) || from > len)
        return -1;
    const char *s = fm_s3_find_bytes(xml + from, len - from, open, (size_t)open_len);
    if (s == NULL)
        return -1;
    s += open_len;
    const char *e = fm_s3_find_bytes(s, len - (size_t)(s - xml), close, (size_t)close_len);
    if (e == NULL)
        return -1;
    *start = s;
    *end = e;
    *after = (size_t)(e - xml) + (size_t)close_len;
    return 0;
}

int fm_s3_xml_next(const char *xml, size_t len, const char *tag, size_t *offset, const char **inner, size_t *inner_len)
{
    const char *start, *end;
    size_t after;
    if (offset == NULL || find_element(xml, len, tag, *offset, &start, &end, &after) != 0)
        return -1;
    *inner = start;
    *inner_len = (size_t)(end - start);
    *offset = after;
    return 0;
}

int fm_s3_xml_text(const char *xml, size_t len, const char *tag, char *out, size_t out_size)
{
    if (out_size == 0)
        return -1;
    out[0] = '\0';
    const char *start, *end;
    size_t after;
    if (find_element(xml, len, tag, 0, &start, &end, &after) != 0)
        return -1;
    static const struct {
        const char *name;
        char c;
    } entities[] = {{"amp;", '&'}, {"lt;", '<'}, {"gt;", '>'}, {"quot;", '"'}, {"apos;", '\''}};
    size_t o = 0;
    for (const char *p = start; p < end;) {
        size_t room = out_size - 1 - o;
        if (*p == '&') {
            size_t rest = (size_t)(end - p - 1);
            int done = 0;
            for (size_t i = 0; i < sizeof(entities) / sizeof(entities[0]) && !done; i++) {
                size_t n = strlen(entities[i].name);
                if (n <= rest && memcmp(p + 1, entities[i].name, n) == 0) {
                    if (room < 1)
                        goto too_long;
                    out[o++] = entities[i].c;
                    p += 1 + n;
                    done = 1;
                }
            }
            if (!done && rest >= 3 && p[1] == '#') {
                /* &#NNN; or &#xHHH; character reference */
                int hex = p[2] == 'x' || p[2] == 'X';
                const char *q = p + 2 + hex;
                unsigned long cp = 0;
                size_t digits = 0;
                for (; q < end && *q != ';' && digits < 8; q++, digits++) {
                    int d = hex ? fm_hex_digit(*q) : *q >= '0' && *q <= '9' ? *q - '0' : -1;
                    if (d < 0)
                        break;
                    cp = cp * (hex ? 16 : 10) + (unsigned long)d;
                }
                if (digits > 0 && q < end && *q == ';') {
                    size_t n = put_utf8(out + o, room, cp);
                    if (n == 0)
                        goto too_long;
                    o += n;
                    p = q + 1;
                    done = 1;
                }
            }
            if (done)
                continue;
        }
        if (room < 1)
            goto too_long;
        out[o++] = *p++;
    }
    out[o] = '\0';
    return 0;
too_long:
    out[0] = '\0';
    return -1;
}

/* ---- ListParts --------------------------------------------------------------------------------------------- */

/* A decimal number of 1..max_digits digits and nothing else, as S3 writes them; -1 if not. */
long long fm_s3_parse_count(const char *text, size_t max_digits)
{
    size_t n = strlen(text);
    if (n == 0 || n > max_digits || strspn(text, "0123456789") != n)
        return -1;
    return strtoll(text, NULL, 10);
}

/*
 * Appends the <Part> elements of one ListParts page to parts[*count..max_parts). They must be ascending and above
 * `marker` (the page asked for parts after it). Returns 0, or -1 with res->code set.
 */
int fm_s3_read_parts_page(const char *xml, size_t len, int marker, fm_s3_part_t *parts, size_t max_parts, size_t *count,
                          fm_s3_result_t *res)
{
    int last = marker;
    size_t offset = 0;
    const char *inner;
    size_t inner_len;
    while (fm_s3_xml_next(xml, len, "Part", &offset, &inner, &inner_len) == 0) {
        char number[16], size[32];
        fm_s3_part_t part;
        if (fm_s3_xml_text(inner, inner_len, "PartNumber", number, sizeof(number)) != 0 ||
            fm_s3_xml_text(inner, inner_len, "Size", size, sizeof(size)) != 0 ||
            fm_s3_xml_text(inner, inner_len, "ETag", part.etag, sizeof(part.etag)) != 0)
            return fm_s3_invalid_response(res, "ListParts: a <Part> without PartNumber, Size or a short ETag");
        long long part_number = fm_s3_parse_count(number, 5);
        part.size = fm_s3_parse_count(size, 18);
        if (part_number < 1 || part_number > FM_S3_MAX_PARTS || part.size < 0)
            return fm_s3_invalid_response(res, "ListParts: bad part number '%s' or size '%s'", number, size);
        part.part_number = (int)part_number;
        if (part.part_number <= last)
            return fm_s3_invalid_response(res, "ListParts: part %d listed after part %d", part.part_number, last);
        last = part.part_number;
        if (*count >= max_parts) {
            strcpy(res->code, "TooManyParts");
            snprintf(res->message, sizeof(res->message), "the upload has more than the %zu parts asked for", max_parts);
            return -1;
        }
        parts[(*count)++] = part;
    }
    return 0;
}

/* ---- ListObjectsV2 ----------------------------------------------------------------------------------------- */

/* Room for a <Key>'s text once its XML entities are undone: a URL-encoded key of 1024 bytes takes 3 bytes a byte. */
#define KEY_TEXT_MAX (3 * (FM_S3_KEY_MAX - 1) + 1)

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil). */
static long long days_from_civil(long long y, unsigned m, unsigned d)
{
    y -= m <= 2;
    long long era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (long long)doe - 719468;
}

/* `n` decimal digits at `p`; -1 if one is not a digit. */
static int digits(const char *p, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

/* ISO 8601 as S3 writes <LastModified>: "YYYY-MM-DDTHH:MM:SS[.fff]Z" (UTC), to Unix seconds; -1 if it is not one. */
static long long parse_iso8601(const char *text)
{
    static const unsigned char month_days[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    size_t n = strlen(text);
    if (n < 20 || text[4] != '-' || text[7] != '-' || text[10] != 'T' || text[13] != ':' || text[16] != ':' ||
        text[n - 1] != 'Z')
        return -1;
    if (n > 20 && (text[19] != '.' || n == 21 || n > 30 || strspn(text + 20, "0123456789") != n - 21))
        return -1;
    int year = digits(text, 4), month = digits(text + 5, 2), day = digits(text + 8, 2);
    int hour = digits(text + 11, 2), minute = digits(text + 14, 2), second = digits(text + 17, 2);
    if (year < 1970 || month < 1 || month > 12 || day < 1 || day > month_days[month - 1] || hour > 23 || minute > 59 ||
        second > 60 || hour < 0 || minute < 0 || second < 0)
        return -1;
    int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    if (month == 2 && day == 29 && !leap)
        return -1;
    return days_from_civil(year, (unsigned)month, (unsigned)day) * 86400 + hour * 3600 + minute * 60 + second;
}

/* Undoes encoding-type=url (S3 encodes as a form does: '+' is a space, a '+' in the key is %2B) into
 * out[FM_S3_KEY_MAX]; 0, or -1 for a bad escape, a NUL or a key over 1024 bytes. */
static int url_decode_key(const char *in, char *out)
{
    return fm_pct_decode(in, strlen(in), out, FM_S3_KEY_MAX, NULL, FM_PCT_FORM) == FM_PCT_OK ? 0 : -1;
}

/* Reads one <Contents> into `object`; 0, or -1 with res set. */
static int read_listed_object(const char *inner, size_t inner_len, int url_encoded, fm_s3_object_t *object,
                              fm_s3_result_t *res)
{
    char text[KEY_TEXT_MAX], size[32], date[40];
    /* A raw NUL would cut the key short and make it another key. */
    if (memchr(inner, '\0', inner_len) != NULL)
        return fm_s3_invalid_response(res, "ListObjectsV2: a NUL byte in a <Contents>");
    if (fm_s3_xml_text(inner, inner_len, "Key", text, sizeof(text)) != 0 ||
        fm_s3_xml_text(inner, inner_len, "Size", size, sizeof(size)) != 0 ||
        fm_s3_xml_text(inner, inner_len, "LastModified", date, sizeof(date)) != 0)
        return fm_s3_invalid_response(res,
                                      "ListObjectsV2: a <Contents> without Key, Size or LastModified, or too long");
    if (url_encoded) {
        if (url_decode_key(text, object->key) != 0)
            return fm_s3_invalid_response(res, "ListObjectsV2: a key that is not URL-encoded as asked");
    } else {
        size_t n = strlen(text);
        if (n >= FM_S3_KEY_MAX)
            return fm_s3_invalid_response(res, "ListObjectsV2: a key of %zu bytes", n);
        memcpy(object->key, text, n + 1);
    }
    if (object->key[0] == '\0')
        return fm_s3_invalid_response(res, "ListObjectsV2: an empty key");
    object->size = fm_s3_parse_count(size, 18);
    object->last_modified = parse_iso8601(date);
    if (object->size < 0 || object->last_modified < 0)
        return fm_s3_invalid_response(res, "ListObjectsV2: bad size '%s' or LastModified '%s'", size, date);
    return 0;
}

/* strcmp compares as unsigned char (C17 7.24.4): S3 lists keys in that (UTF-8 binary) order. */
int fm_s3_list_objects_parse(const char *xml, size_t len, const char *prefix, const char *start_after,
                             fm_s3_object_t *objects, size_t max, size_t *count, int *truncated, fm_s3_result_t *res)
{
    *count = 0;
    *truncated = 0;
    if (prefix == NULL)
        prefix = "";
    if (start_after == NULL)
        start_after = "";
    if (xml == NULL || fm_s3_find_bytes(xml, len, "</ListBucketResult>", 19) == NULL)
        return fm_s3_invalid_response(res, "ListObjectsV2: the answer is not a whole ListBucketResult");
    char encoding[16] = "", more[16] = "";
    size_t offset = 0, inner_len, found = 0;
    const char *inner;
    /* Present, it must say url (too long to read is not "absent": the keys would be taken as plain). */
    int url_encoded = fm_s3_xml_next(xml, len, "EncodingType", &offset, &inner, &inner_len) == 0;
    if (url_encoded &&
        (fm_s3_xml_text(xml, len, "EncodingType", encoding, sizeof(encoding)) != 0 || strcmp(encoding, "url") != 0))
        return fm_s3_invalid_response(res, "ListObjectsV2: EncodingType '%s' is not url", encoding);
    if (fm_s3_xml_text(xml, len, "IsTruncated", more, sizeof(more)) != 0 ||
        (strcmp(more, "true") != 0 && strcmp(more, "false") != 0))
        return fm_s3_invalid_response(res, "ListObjectsV2: IsTruncated is not true or false");
    size_t prefix_len = strlen(prefix);
    offset = 0;
    while (fm_s3_xml_next(xml, len, "Contents", &offset, &inner, &inner_len) == 0) {
        if (found >= max)
            return fm_s3_invalid_response(res, "ListObjectsV2: more than the %zu keys asked for", max);
        fm_s3_object_t *object = &objects[found];
        if (read_listed_object(inner, inner_len, url_encoded, object, res) != 0)
            return -1;
        const char *after = found > 0 ? objects[found - 1].key : start_after;
        if (strncmp(object->key, prefix, prefix_len) != 0 || strcmp(object->key, after) <= 0)
            return fm_s3_invalid_response(res, "ListObjectsV2: key %zu is outside the prefix or not after the previous",
                                          found);
        found++;
    }
    /* A truncated page must move the listing forward, or a broken store could keep us at one place forever. */
    if (strcmp(more, "true") == 0 && found == 0)
        return fm_s3_invalid_response(res, "ListObjectsV2: truncated page without a key");
    *count = found;
    *truncated = strcmp(more, "true") == 0;
    return 0;
}

/* ---- CompleteMultipartUpload ------------------------------------------------------------------------------- */

typedef struct {
    char *data;
    size_t len, cap;
} buf_t;

static void buf_add(buf_t *b, const char *text, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap > 0 ? b->cap : 1024;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *data = realloc(b->data, cap);
        if (data == NULL)
            abort();
        b->data = data;
        b->cap = cap;
    }
    memcpy(b->data + b->len, text, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void buf_str(buf_t *b, const char *text)
{
    buf_add(b, text, strlen(text));
}

/*
 * The ETag's opaque text without its quotes into out[FM_S3_ETAG_MAX]; 0, or -1 if it is not an RFC 7232
 * entity-tag: etagc = %x21 / %x23-7E / obs-text, so no space, quote or control character can reach the XML.
 */
static int etag_opaque(const char *etag, char *out)
{
    size_t n = strlen(etag);
    if (n >= 2 && etag[0] == '"' && etag[n - 1] == '"') {
        etag++;
        n -= 2;
    }
    if (n == 0 || n >= FM_S3_ETAG_MAX)
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)etag[i];
        if (c < 0x21 || c == '"' || c == 0x7F)
            return -1;
    }
    memcpy(out, etag, n);
    out[n] = '\0';
    return 0;
}

/* Text for XML element content: the five special characters as entities. */
static void buf_xml_text(buf_t *b, const char *text)
{
    static const char specials[] = "&<>\"'";
    static const char *const entities[] = {"&amp;", "&lt;", "&gt;", "&quot;", "&apos;"};
    for (const char *p = text; *p != '\0'; p++) {
        const char *special = strchr(specials, *p);
        if (special != NULL)
            buf_str(b, entities[special - specials]);
        else
            buf_add(b, p, 1);
    }
}

/*
 * The CompleteMultipartUpload body for parts[0..count) into *data (malloc'd, *len bytes), as the S3 API reference
 * has it: <Part><PartNumber/><ETag/></Part> per part, in the given order. 0, or -1 with res set for a bad part.
 */
int fm_s3_complete_multipart_body(const fm_s3_part_t *parts, size_t count, char **data, size_t *len,
                                  fm_s3_result_t *res)
{
    buf_t body = {0};
    buf_str(&body, "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
    for (size_t i = 0; i < count; i++) {
        char opaque[FM_S3_ETAG_MAX], number[32];
        if (parts[i].part_number < 1 || parts[i].part_number > FM_S3_MAX_PARTS ||
            etag_opaque(parts[i].etag, opaque) != 0) {
            free(body.data);
            return fm_s3_refuse(res, "part %zu: number %d or its ETag is not valid", i + 1, parts[i].part_number);
        }
        /* S3 answers InvalidPartOrder for numbers not strictly ascending; Ceph RGW 16 sorts them itself (a part
         * given twice counts once), so the same request would complete there: refuse it here for both. */
        if (i > 0 && parts[i].part_number <= parts[i - 1].part_number) {
            free(body.data);
            fm_s3_refuse(res, "part %d is given after part %d: parts must be ascending, each once",
                         parts[i].part_number, parts[i - 1].part_number);
            strcpy(res->code, "InvalidPartOrder");
            return -1;
        }
        snprintf(number, sizeof(number), "%d", parts[i].part_number);
        buf_str(&body, "<Part><PartNumber>");
        buf_str(&body, number);
        buf_str(&body, "</PartNumber><ETag>\"");
        buf_xml_text(&body, opaque);
        buf_str(&body, "\"</ETag></Part>");
    }
    buf_str(&body, "</CompleteMultipartUpload>");
    *data = body.data;
    *len = body.len;
    return 0;
}
