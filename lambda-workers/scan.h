/*
 * scan: the clamd side of step_scan (worker.h), kept apart so the reply parser can be tested and fuzzed without
 * a daemon (tests/fuzz/fuzz_clamd_reply.c).
 *
 * clamd's INSTREAM (clamd(8), "INSTREAM"): after "zINSTREAM\0", the file goes as chunks of a 4-byte big-endian
 * length and that many bytes, ended by a zero-length chunk; clamd answers one NUL-terminated line.
 */
#ifndef FM_SCAN_H
#define FM_SCAN_H

#include <stddef.h>

/** fm_clamd_parse_reply() results. */
#define FM_CLAMD_CLEAN 0
#define FM_CLAMD_FOUND 1
#define FM_CLAMD_SIZE_LIMIT 2
#define FM_CLAMD_ERROR (-1)

/**
 * Reads clamd's answer to INSTREAM: `len` bytes of `reply` (need not be NUL-terminated; only the text before the
 * first NUL counts, and trailing newlines are ignored, so "n"-prefixed answers read the same).
 *
 *   "stream: OK"                            FM_CLAMD_CLEAN (0)
 *   "stream: <signature> FOUND"             FM_CLAMD_FOUND (1): the signature name goes to `signature`
 *   "INSTREAM size limit exceeded. ERROR"   FM_CLAMD_SIZE_LIMIT (2): the stream was longer than StreamMaxLength
 *   anything else (other errors, a cut or empty reply)   FM_CLAMD_ERROR (-1)
 *
 * `signature` (`sig_size` bytes, may be 0 and then untouched) is always NUL-terminated: the name for
 * FM_CLAMD_FOUND, cut to fit and with bytes outside printable ASCII as '?' (it ends up in a message shown to the
 * file's owner), else "".
 */
int fm_clamd_parse_reply(const char *reply, size_t len, char *signature, size_t sig_size);

#endif /* FM_SCAN_H */
