/*
 * mediatype: the one reader of a Content-Type value (RFC 9110 §8.3.1), for everything that takes a type from a client
 * (POST /v1/uploads, Uppy's routes) or decides by one (the edge's active-content rule):
 *
 *   media-type = type "/" subtype *( OWS ";" OWS parameter )
 *   parameter  = token "=" ( token / quoted-string )             (RFC 9110 §5.6.6, without its empty `[ parameter ]`)
 *   token      = 1*tchar   tchar = "!#$%&'*+-.^_`|~", DIGIT, ALPHA
 *   quoted-string = DQUOTE *( qdtext / "\" ( HTAB / SP / VCHAR ) ) DQUOTE
 *   qdtext     = HTAB / SP / %x21 / %x23-5B / %x5D-7E
 *   OWS        = *( SP / HTAB )
 *
 * Stricter than the RFC where a value we sign and store as sent gains nothing from leniency: no blank before the
 * type or after the last parameter, no empty parameter ("text/plain;"), no obs-text (bytes >= 0x80, whose meaning
 * depends on the client's header encoding), no HTAB at all (OWS is SP only: Ceph RGW canonicalises a tab in a signed
 * header otherwise than SigV4 signers do, so a PUT signed for "text/plain;\tcharset=utf-8" is refused with
 * SignatureDoesNotMatch although the client sends exactly that header: measured against the stack's RGW), at most
 * FM_MEDIA_TYPE_MAX_BYTES bytes and FM_MEDIA_TYPE_MAX_PARAMS parameters. Matching is on the essence ("type/subtype",
 * lower-cased: both are case-insensitive); parameters never change what a type is.
 *
 * Pure functions over bytes, no allocation, no global state: safe on any thread.
 */
#ifndef FM_MEDIATYPE_H
#define FM_MEDIATYPE_H

#include <stddef.h>

/** Longest accepted value in bytes (files.content_type, the upload's fixed buffer of 128). */
#define FM_MEDIA_TYPE_MAX_BYTES 127
/** Most parameters in one value ("charset", "boundary", "profile"…: real types carry one or two). */
#define FM_MEDIA_TYPE_MAX_PARAMS 8

/** Why a value is refused; FM_MEDIA_TYPE_OK (0) when it is not. */
typedef enum fm_media_type_error {
    FM_MEDIA_TYPE_OK = 0,
    FM_MEDIA_TYPE_EMPTY,          /**< zero bytes */
    FM_MEDIA_TYPE_TOO_LONG,       /**< more than FM_MEDIA_TYPE_MAX_BYTES bytes */
    FM_MEDIA_TYPE_CONTROL,        /**< a control character (NUL, CR, LF, HTAB, DEL…) or a byte >= 0x80 */
    FM_MEDIA_TYPE_BAD_TYPE,       /**< the type is not a token, or no "/" follows it */
    FM_MEDIA_TYPE_BAD_SUBTYPE,    /**< the subtype is not a token */
    FM_MEDIA_TYPE_BAD_PARAMETER,  /**< a parameter name is not a token, or has no "=" */
    FM_MEDIA_TYPE_BAD_VALUE,      /**< a parameter value is empty, or neither a token nor a quoted string */
    FM_MEDIA_TYPE_UNTERMINATED,   /**< a quoted string without its closing quote */
    FM_MEDIA_TYPE_TOO_MANY_PARAMS /**< more than FM_MEDIA_TYPE_MAX_PARAMS parameters */
} fm_media_type_error_t;

/** What a valid value is. */
typedef struct fm_media_type {
    char essence[FM_MEDIA_TYPE_MAX_BYTES + 1]; /**< "type/subtype", lower-case, NUL-terminated */
    size_t type_len;                           /**< bytes of the type in essence (the '/' is at essence[type_len]) */
    int param_count;                           /**< parameters that followed */
} fm_media_type_t;

/**
 * Reads `len` bytes at `value` (need not be NUL-terminated; a NUL inside is a control character) as one media type.
 * Returns FM_MEDIA_TYPE_OK with *out filled, or the reason; *out is then an empty essence. `out` may be NULL.
 */
fm_media_type_error_t fm_media_type_parse(const char *value, size_t len, fm_media_type_t *out);

/** A short English sentence for the error answer, e.g. "a content type parameter needs a value after '='". */
const char *fm_media_type_error_message(fm_media_type_error_t error);

/**
 * The essence of a NUL-terminated value into `out` (at least FM_MEDIA_TYPE_MAX_BYTES + 1 bytes): 0, or -1 (out = "")
 * when the value is not one valid media type. For deciders that must treat anything unreadable as the worst case.
 */
int fm_media_type_essence(const char *value, char *out, size_t size);

#endif /* FM_MEDIATYPE_H */
