/*
 * mediatype.c: RFC 9110 §8.3.1 media types, see mediatype.h for the grammar and where this reader is stricter.
 */
#include "mediatype.h"

#include <stdio.h>
#include <string.h>

/* RFC 9110 §5.6.2 tchar. */
static int is_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* Anything but visible ASCII and SP: C0 controls (NUL, CR, LF, and HTAB too, see mediatype.h), DEL and every byte
 * >= 0x80. */
static int is_refused_byte(unsigned char c)
{
    return c < 0x20 || c >= 0x7f;
}

static int is_ows(unsigned char c)
{
    return c == ' ';
}

/* The end of the token at s[i..len). */
static size_t token_end(const unsigned char *s, size_t i, size_t len)
{
    while (i < len && is_tchar(s[i]))
        ++i;
    return i;
}

static fm_media_type_error_t fail(fm_media_type_t *out, fm_media_type_error_t error)
{
    if (out != NULL) {
        out->essence[0] = '\0';
        out->type_len = 0;
        out->param_count = 0;
    }
    return error;
}

/* One parameter at s[*at..len) (after "; " and its OWS): name "=" ( token / quoted-string ). */
static fm_media_type_error_t parameter(const unsigned char *s, size_t len, size_t *at)
{
    size_t i = *at, name_end = token_end(s, i, len);
    if (name_end == i || name_end >= len || s[name_end] != '=')
        return FM_MEDIA_TYPE_BAD_PARAMETER;
    i = name_end + 1;
    if (i < len && s[i] == '"') {
        for (++i;; ++i) {
            if (i >= len)
                return FM_MEDIA_TYPE_UNTERMINATED;
            if (s[i] == '"')
                break;
            if (s[i] == '\\' && ++i >= len) /* quoted-pair: any SP/VCHAR (the rest was refused up front) */
                return FM_MEDIA_TYPE_UNTERMINATED;
        }
        *at = i + 1;
        return FM_MEDIA_TYPE_OK;
    }
    size_t value_end = token_end(s, i, len);
    if (value_end == i)
        return FM_MEDIA_TYPE_BAD_VALUE;
    *at = value_end;
    return FM_MEDIA_TYPE_OK;
}

fm_media_type_error_t fm_media_type_parse(const char *value, size_t len, fm_media_type_t *out)
{
    const unsigned char *s = (const unsigned char *)value;
    if (len == 0)
        return fail(out, FM_MEDIA_TYPE_EMPTY);
    if (len > FM_MEDIA_TYPE_MAX_BYTES)
        return fail(out, FM_MEDIA_TYPE_TOO_LONG);
    for (size_t i = 0; i < len; ++i) /* first: a CR/LF anywhere (even quoted) would split the header we sign */
        if (is_refused_byte(s[i]))
            return fail(out, FM_MEDIA_TYPE_CONTROL);

    size_t type_end = token_end(s, 0, len);
    if (type_end == 0 || type_end >= len || s[type_end] != '/')
        return fail(out, FM_MEDIA_TYPE_BAD_TYPE);
    size_t subtype_end = token_end(s, type_end + 1, len);
    if (subtype_end == type_end + 1)
        return fail(out, FM_MEDIA_TYPE_BAD_SUBTYPE);

    int params = 0;
    size_t i = subtype_end;
    while (i < len) {
        size_t semicolon = i;
        while (semicolon < len && is_ows(s[semicolon]))
            ++semicolon;
        if (semicolon == len || s[semicolon] != ';') /* trailing blanks, or anything else after a token */
            return fail(out, i == subtype_end ? FM_MEDIA_TYPE_BAD_SUBTYPE : FM_MEDIA_TYPE_BAD_VALUE);
        i = semicolon + 1;
        while (i < len && is_ows(s[i]))
            ++i;
        if (++params > FM_MEDIA_TYPE_MAX_PARAMS)
            return fail(out, FM_MEDIA_TYPE_TOO_MANY_PARAMS);
        fm_media_type_error_t error = parameter(s, len, &i);
        if (error != FM_MEDIA_TYPE_OK)
            return fail(out, error);
    }

    if (out != NULL) {
        for (size_t k = 0; k < subtype_end; ++k)
            out->essence[k] = (char)(s[k] >= 'A' && s[k] <= 'Z' ? s[k] - 'A' + 'a' : s[k]);
        out->essence[subtype_end] = '\0';
        out->type_len = type_end;
        out->param_count = params;
    }
    return FM_MEDIA_TYPE_OK;
}

const char *fm_media_type_error_message(fm_media_type_error_t error)
{
    switch (error) {
    case FM_MEDIA_TYPE_OK:
        return "the content type is valid";
    case FM_MEDIA_TYPE_EMPTY:
        return "the content type is empty";
    case FM_MEDIA_TYPE_TOO_LONG:
        return "the content type is longer than 127 bytes";
    case FM_MEDIA_TYPE_CONTROL:
        return "the content type may hold only visible ASCII and spaces";
    case FM_MEDIA_TYPE_BAD_TYPE:
        return "the content type must start with type/subtype";
    case FM_MEDIA_TYPE_BAD_SUBTYPE:
        return "the content type's subtype must be a token, then only ;-separated parameters";
    case FM_MEDIA_TYPE_BAD_PARAMETER:
        return "a content type parameter must be name=value";
    case FM_MEDIA_TYPE_BAD_VALUE:
        return "a content type parameter value must be a token or a quoted string";
    case FM_MEDIA_TYPE_UNTERMINATED:
        return "a quoted string in the content type has no closing quote";
    case FM_MEDIA_TYPE_TOO_MANY_PARAMS:
        return "the content type has more than 8 parameters";
    }
    return "the content type is not valid";
}

int fm_media_type_essence(const char *value, char *out, size_t size)
{
    fm_media_type_t parsed;
    if (size == 0)
        return -1;
    if (fm_media_type_parse(value, strlen(value), &parsed) != FM_MEDIA_TYPE_OK || strlen(parsed.essence) >= size) {
        out[0] = '\0';
        return -1;
    }
    snprintf(out, size, "%s", parsed.essence);
    return 0;
}
