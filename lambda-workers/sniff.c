/*
 * step_sniff: the real type of the bytes (libmagic, MIME type) against the type the client declared.
 *
 * Both types are first made canonical: parameters dropped ("; charset=…"), lowercased, aliases folded
 * (image/jpg → image/jpeg, audio/x-wav → audio/wav, application/x-gzip → application/gzip, …; see `aliases`).
 * job->real_type receives the canonical real type. Then, in this order:
 *
 *   real type                                declared type                          decision
 *   ---------------------------------------  -------------------------------------  ---------------------------
 *   executable (x-executable, x-sharedlib,   anything                               QUARANTINE
 *     x-pie-executable, x-dosexec, x-mach-
 *     binary, PE, x-msi, …)
 *   script (text/x-shellscript,              text/plain, text/csv, text/markdown    OK (source code is text)
 *     text/x-script.*, text/x-python, …)     anything else (octet-stream too)       QUARANTINE
 *   text/html, application/xhtml+xml         text/plain, text/csv, text/markdown    OK (kept and served as text)
 *                                            anything else (octet-stream too)       QUARANTINE
 *   application/x-empty (0 bytes)            text/plain, application/octet-stream   OK
 *                                            anything else                          QUARANTINE
 *   anything else                            application/octet-stream (or none)     OK
 *                                            a type of `policy` below               OK if listed, else QUARANTINE
 *                                            a type not in `policy` (FM_ALLOWED_    OK if equal, or if libmagic
 *                                              CONTENT_TYPES="*")                     found nothing (octet-stream)
 *
 * `policy` covers every type of FM_DEFAULT_CONTENT_TYPES (common/config.c). Images must be exactly the declared
 * format: a decoder is chosen by the bytes, so a PNG declared as JPEG is a lie worth refusing. Containers accept
 * the formats built on them (a .docx is a zip; an .xlsx written by a non-Office tool is often only "zip" to
 * libmagic).
 */
#include <ctype.h>
#include <magic.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "worker.h"

#define TEXT_TYPES "text/*"
#define OOXML "application/vnd.openxmlformats-officedocument."

/* Declared type → the real types accepted for it, '|'-separated; a trailing '*' makes a prefix. */
static const struct {
    const char *declared;
    const char *accepted;
} policy[] = {
    {"image/jpeg", "image/jpeg"},
    {"image/png", "image/png"},
    {"image/gif", "image/gif"},
    {"image/webp", "image/webp"},
    {"image/avif", "image/avif"},
    {"image/heic", "image/heic"},
    {"image/tiff", "image/tiff"},
    /* libmagic only says svg+xml when the file starts with an XML declaration or <svg */
    {"image/svg+xml", "image/svg+xml|text/plain|text/xml|application/xml"},
    {"application/pdf", "application/pdf"},
    {"text/plain", TEXT_TYPES "|application/json"},
    {"text/csv", TEXT_TYPES},
    {"text/markdown", TEXT_TYPES},
    {"application/json", "application/json|text/plain"},
    {"application/zip", "application/zip|" OOXML "*|application/vnd.oasis.opendocument.*|application/epub+zip"},
    {"application/gzip", "application/gzip"},
    {"application/x-tar", "application/x-tar"},
    {"video/mp4", "video/mp4|video/x-m4v|audio/mp4"},
    {"video/webm", "video/webm|audio/webm"},
    {"video/quicktime", "video/quicktime|video/mp4"},
    {"audio/mpeg", "audio/mpeg"},
    {"audio/ogg", "audio/ogg|application/ogg"},
    {"audio/wav", "audio/wav"},
    {"audio/flac", "audio/flac"},
    /* Word 97–2003 is an OLE2 compound file; libmagic names it by what it finds inside */
    {"application/msword", "application/msword|application/vnd.ms-office|application/x-ole-storage|application/cdfv2"},
    {OOXML "wordprocessingml.document", OOXML "wordprocessingml.document|application/zip"},
    {OOXML "spreadsheetml.sheet", OOXML "spreadsheetml.sheet|application/zip"},
    {OOXML "presentationml.presentation", OOXML "presentationml.presentation|application/zip"},
};

static const struct {
    const char *alias, *canonical;
} aliases[] = {
    {"image/jpg", "image/jpeg"},
    {"image/pjpeg", "image/jpeg"},
    {"image/x-png", "image/png"},
    {"image/x-tiff", "image/tiff"},
    {"image/heif", "image/heic"},
    {"image/heic-sequence", "image/heic"},
    {"image/heif-sequence", "image/heic"},
    {"image/svg", "image/svg+xml"},
    {"text/x-markdown", "text/markdown"},
    {"text/x-csv", "text/csv"},
    {"application/csv", "text/csv"},
    {"text/json", "application/json"},
    {"application/x-gzip", "application/gzip"},
    {"application/x-zip-compressed", "application/zip"},
    {"application/x-zip", "application/zip"},
    {"audio/x-wav", "audio/wav"},
    {"audio/wave", "audio/wav"},
    {"audio/vnd.wave", "audio/wav"},
    {"audio/x-flac", "audio/flac"},
    {"audio/mp3", "audio/mpeg"},
    {"audio/x-mpeg", "audio/mpeg"},
    {"video/x-quicktime", "video/quicktime"},
    {"inode/x-empty", "application/x-empty"},
};

static const char *const executables[] = {
    "application/x-executable",
    "application/x-sharedlib",
    "application/x-pie-executable",
    "application/x-dosexec",
    "application/x-mach-binary",
    "application/x-object",
    "application/vnd.microsoft.portable-executable",
    "application/x-msdownload",
    "application/x-msi",
    "application/x-java-applet",
    "application/x-elf",
};

static const char *const scripts[] = {
    "text/x-shellscript",
    "text/x-script.*",
    "text/x-python",
    "text/x-perl",
    "text/x-ruby",
    "text/x-php",
    "text/x-tcl",
    "text/x-awk",
    "text/x-lua",
    "text/x-msdos-batch",
    "text/javascript",
    "application/javascript",
    "application/x-powershell",
};

static const char *const html_types[] = {"text/html", "application/xhtml+xml"};

/* Type against one accepted pattern: equal, or starting with the pattern when it ends in '*'. */
static int type_matches(const char *type, const char *pattern, size_t pattern_len)
{
    if (pattern_len > 0 && pattern[pattern_len - 1] == '*')
        return strncmp(type, pattern, pattern_len - 1) == 0;
    return strlen(type) == pattern_len && strncmp(type, pattern, pattern_len) == 0;
}

static int in_list(const char *type, const char *const *list, size_t count)
{
    for (size_t i = 0; i < count; i++)
        if (type_matches(type, list[i], strlen(list[i])))
            return 1;
    return 0;
}

/* `accepted` is '|'-separated. */
static int accepted_by(const char *type, const char *accepted)
{
    for (const char *p = accepted; *p != '\0';) {
        const char *end = strchr(p, '|');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        if (type_matches(type, p, len))
            return 1;
        p += len + (end != NULL);
    }
    return 0;
}

/* Canonical form of a MIME type: no parameters, no blanks, lowercase, aliases folded. */
static void canonical_type(const char *in, char *out, size_t out_size)
{
    while (*in == ' ' || *in == '\t')
        in++;
    size_t len = 0;
    for (; in[len] != '\0' && in[len] != ';' && in[len] != ' ' && in[len] != '\t' && len + 1 < out_size; len++)
        out[len] = (char)tolower((unsigned char)in[len]);
    out[len] = '\0';
    for (size_t i = 0; i < sizeof(aliases) / sizeof(aliases[0]); i++)
        if (strcmp(out, aliases[i].alias) == 0) {
            snprintf(out, out_size, "%s", aliases[i].canonical);
            return;
        }
}

static int is_text_declared(const char *declared)
{
    return strcmp(declared, "text/plain") == 0 || strcmp(declared, "text/csv") == 0 ||
           strcmp(declared, "text/markdown") == 0;
}

/* The decision of the table above: 1 accept, 0 refuse. */
static int compatible(const char *declared, const char *real)
{
    if (in_list(real, executables, sizeof(executables) / sizeof(executables[0])))
        return 0;
    if (in_list(real, scripts, sizeof(scripts) / sizeof(scripts[0])) ||
        in_list(real, html_types, sizeof(html_types) / sizeof(html_types[0])))
        return is_text_declared(declared);
    if (strcmp(real, "application/x-empty") == 0)
        return strcmp(declared, "text/plain") == 0 || strcmp(declared, "application/octet-stream") == 0;
    if (strcmp(declared, "application/octet-stream") == 0)
        return 1;
    for (size_t i = 0; i < sizeof(policy) / sizeof(policy[0]); i++)
        if (strcmp(declared, policy[i].declared) == 0)
            return accepted_by(real, policy[i].accepted);
    return strcmp(declared, real) == 0 || strcmp(real, "application/octet-stream") == 0;
}

/* One libmagic cookie per thread (a magic_t is not thread-safe), closed when the thread exits. */
static pthread_key_t magic_key;
static pthread_once_t magic_key_once = PTHREAD_ONCE_INIT;

static void magic_key_destroy(void *cookie)
{
    magic_close(cookie);
}

static void magic_key_create(void)
{
    pthread_key_create(&magic_key, magic_key_destroy);
}

static magic_t thread_magic(fm_job_t *job)
{
    pthread_once(&magic_key_once, magic_key_create);
    magic_t cookie = pthread_getspecific(magic_key);
    if (cookie != NULL)
        return cookie;
    cookie = magic_open(MAGIC_MIME_TYPE | MAGIC_ERROR);
    if (cookie == NULL) {
        snprintf(job->reason, sizeof(job->reason), "libmagic: cannot start");
        return NULL;
    }
    if (magic_load(cookie, NULL) != 0) { /* the system database */
        snprintf(job->reason, sizeof(job->reason), "libmagic: %s", magic_error(cookie));
        magic_close(cookie);
        return NULL;
    }
    pthread_setspecific(magic_key, cookie);
    return cookie;
}

fm_step_rc step_sniff(fm_job_t *job)
{
    struct stat st;
    if (stat(job->path, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(job->reason, sizeof(job->reason), "the fetched copy is missing");
        return FM_STEP_RETRY;
    }
    const char *found = "application/x-empty"; /* libmagic names it inode/x-empty from a path */
    if (st.st_size > 0) {
        magic_t cookie = thread_magic(job);
        if (cookie == NULL) /* the host's libmagic (its database missing, no memory): nothing about the content */
            return FM_STEP_RETRY;
        found = magic_file(cookie, job->path);
        if (found == NULL) {
            /* An operating-system error reading the copy (MAGIC_ERROR makes it one) is the disk's; anything else is
             * libmagic failing on these bytes, which it would do again. */
            snprintf(job->reason, sizeof(job->reason), "libmagic: %s", magic_error(cookie));
            return magic_errno(cookie) != 0 ? FM_STEP_RETRY : FM_STEP_FAIL;
        }
    }
    canonical_type(found, job->real_type, sizeof(job->real_type));

    char declared[sizeof(job->declared_type)];
    canonical_type(job->declared_type, declared, sizeof(declared));
    if (declared[0] == '\0')
        snprintf(declared, sizeof(declared), "application/octet-stream");
    if (compatible(declared, job->real_type))
        return FM_STEP_OK;
    snprintf(job->reason, sizeof(job->reason), "declared %.100s but the bytes are %.100s", declared, job->real_type);
    return FM_STEP_QUARANTINE;
}
