/*
 * email: the one normal form of an account's email address (issue 10 #8).
 *
 * Every place that compares addresses (register, login, the login limiter's keys, FM_ADMIN_EMAIL) uses the form
 * written by fm_email_normalize, so that two spellings are the same account exactly when they share one limiter
 * counter. Accepted: 3..FM_EMAIL_MAX bytes of printable ASCII (0x21..0x7e), exactly one '@' with text on both sides.
 * The normal form lower-cases the ASCII letters and changes nothing else, which is what PostgreSQL's lower() does to
 * ASCII under the stack's collation, so the unique index on lower(email) (schema/001) agrees with it byte for byte.
 *
 * Anything beyond ASCII is refused, not folded: PostgreSQL's lower() maps U+212A KELVIN SIGN to 'k' while an
 * ASCII-only fold leaves it, which let `\u212Aiki@…` log into `kiki@…` past its limiter counter. Internationalised
 * domains are accepted in their ASCII (punycode, `xn--`) form. docs/decisions.md says why not NFKC + case folding.
 */
#ifndef FM_EMAIL_H
#define FM_EMAIL_H

#include <stddef.h>

/** Longest address accepted, in bytes (RFC 5321 §4.5.3.1.3: a path holds at most 256 octets with its brackets). */
#define FM_EMAIL_MAX 254
/** Size of a buffer that always holds a normal form, with its NUL. */
#define FM_EMAIL_BUF_SIZE (FM_EMAIL_MAX + 1)

/**
 * Checks the `len` bytes of `email` (no NUL needed; a NUL inside is refused) and writes its normal form,
 * NUL-terminated, into `out` (`out_size` bytes, at least len + 1). Returns 0, or -1 when the address is not
 * accepted or does not fit; `out` is then "" (when out_size > 0).
 */
int fm_email_normalize(const char *email, size_t len, char *out, size_t out_size);

#endif /* FM_EMAIL_H */
