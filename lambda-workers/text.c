/*
 * step_text: the text the search index gets (PostgreSQL full-text), at most limits->text_max_bytes of UTF-8.
 *
 * Plain text, CSV, Markdown and JSON are read from the start of the file; a PDF gives the text of its pages in
 * order, one "\n" between pages, until the cap. Whatever the source, the result is valid UTF-8 without NULs
 * (PostgreSQL refuses both): invalid sequences become U+FFFD, a character cut by the cap is dropped.
 * Other types have no text (job->text = NULL).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "media.h"

static const char *const text_types[] = {"text/plain", "text/csv", "text/markdown", "application/json"};

typedef struct {
    char *data;
    size_t len, cap;
} text_buf_t;

/* Length of the valid UTF-8 sequence at `s` (RFC 3629: no overlongs, no surrogates, ≤ U+10FFFF); 0 if invalid,
 * -1 if `s` is a valid prefix cut by the end of the input. */
static int utf8_sequence(const unsigned char *s, size_t avail)
{
    unsigned char c = s[0];
    int len;
    unsigned char lo = 0x80, hi = 0xBF; /* the range of the second byte */
    if (c < 0x80)
        return 1;
    else if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else
        return 0;
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= avail)
            return -1;
        unsigned char lower = i == 1 ? lo : 0x80, upper = i == 1 ? hi : 0xBF;
        if (s[i] < lower || s[i] > upper)
            return 0;
    }
    return len;
}

/* Appends `in` made valid, stopping before the cap; 1 when the cap is reached. A sequence cut by the end of
 * `in` is dropped: the caller feeds whole units (a file prefix, a page). */
static int append_clean(text_buf_t *out, const unsigned char *in, size_t in_len)
{
    static const unsigned char replacement[] = {0xEF, 0xBF, 0xBD}; /* U+FFFD */
    size_t i = 0;
    while (i < in_len) {
        if (in[i] == '\0') {
            i++;
            continue;
        }
        int len = utf8_sequence(in + i, in_len - i);
        if (len < 0)
            break;
        const unsigned char *piece = len > 0 ? in + i : replacement;
        size_t piece_len = len > 0 ? (size_t)len : sizeof(replacement);
        if (out->len + piece_len > out->cap)
            return 1;
        memcpy(out->data + out->len, piece, piece_len);
        out->len += piece_len;
        i += len > 0 ? (size_t)len : 1;
    }
    return out->len >= out->cap;
}

static fm_step_rc text_file(fm_job_t *job, text_buf_t *out)
{
    FILE *f = fopen(job->path, "rb");
    if (f == NULL) {
        snprintf(job->reason, sizeof(job->reason), "the fetched copy is missing");
        return FM_STEP_RETRY;
    }
    /* the cap of output bytes never needs more input bytes: a replacement (3 bytes) stands for ≥ 1 byte */
    unsigned char *raw = malloc(out->cap);
    if (raw == NULL) {
        fclose(f);
        snprintf(job->reason, sizeof(job->reason), "out of memory for %zu bytes of text", out->cap);
        return FM_STEP_RETRY;
    }
    size_t raw_len = fread(raw, 1, out->cap, f);
    int failed = ferror(f);
    fclose(f);
    if (failed) {
        free(raw);
        snprintf(job->reason, sizeof(job->reason), "cannot read the fetched copy");
        return FM_STEP_RETRY;
    }
    append_clean(out, raw, raw_len);
    free(raw);
    return FM_STEP_OK;
}

static fm_step_rc text_pdf(fm_job_t *job, text_buf_t *out)
{
    int encrypted;
    PopplerDocument *document = fm_media_open_pdf(job, &encrypted);
    if (document == NULL) {
        if (!encrypted)
            return FM_STEP_FAIL;
        job->reason[0] = '\0'; /* no text without the password */
        return FM_STEP_OK;
    }
    int pages = poppler_document_get_n_pages(document);
    int full = 0;
    for (int i = 0; i < pages && !full; i++) {
        PopplerPage *page = poppler_document_get_page(document, i);
        if (page == NULL)
            continue;
        char *text = poppler_page_get_text(page);
        g_object_unref(page);
        if (text == NULL)
            continue;
        if (out->len > 0)
            full = append_clean(out, (const unsigned char *)"\n", 1);
        if (!full)
            full = append_clean(out, (const unsigned char *)text, strlen(text));
        g_free(text);
    }
    g_object_unref(document);
    return FM_STEP_OK;
}

fm_step_rc step_text(fm_job_t *job, const fm_worker_limits_t *limits)
{
    free(job->text);
    job->text = NULL;
    job->text_len = 0;
    int is_text = 0;
    for (size_t i = 0; i < sizeof(text_types) / sizeof(text_types[0]); i++)
        is_text |= strcmp(job->real_type, text_types[i]) == 0;
    int is_pdf = fm_media_kind(job->real_type) == FM_MEDIA_PDF;
    if ((!is_text && !is_pdf) || limits->text_max_bytes <= 0)
        return FM_STEP_OK;

    text_buf_t out = {.cap = (size_t)limits->text_max_bytes};
    out.data = malloc(out.cap + 1);
    if (out.data == NULL) {
        snprintf(job->reason, sizeof(job->reason), "out of memory for %lld bytes of text", limits->text_max_bytes);
        return FM_STEP_RETRY;
    }
    fm_step_rc rc = is_pdf ? text_pdf(job, &out) : text_file(job, &out);
    if (rc != FM_STEP_OK) {
        free(out.data);
        return rc;
    }
    out.data[out.len] = '\0';
    job->text = out.data;
    job->text_len = out.len;
    return FM_STEP_OK;
}
