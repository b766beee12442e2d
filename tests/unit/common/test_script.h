/*
 * The unit tests' companion scripts (the *_vectors.py files next to them, which make vectors with an independent
 * implementation: botocore, PyJWT): where they are and how they run. Found under FM_SOURCE_DIR with ctest, else in
 * this header's own folder (CMake compiles with absolute paths, so __FILE__ locates it when a test is run by hand).
 */
#ifndef FM_TEST_SCRIPT_H
#define FM_TEST_SCRIPT_H

#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <cmocka.h>

/* The path of tests/unit/common/`name` in `out`; a quote in it fails the test (the scripts run through a shell). */
static inline void test_script_path(const char *name, char *out, size_t size)
{
    const char *source_dir = getenv("FM_SOURCE_DIR");
    if (source_dir != NULL && *source_dir != '\0') {
        snprintf(out, size, "%s/tests/unit/common/%s", source_dir, name);
    } else {
        snprintf(out, size, "%s", __FILE__);
        char *slash = strrchr(out, '/');
        assert_non_null(slash);
        snprintf(slash + 1, size - (size_t)(slash + 1 - out), "%s", name);
    }
    assert_null(strchr(out, '\''));
}

/*
 * Runs script `name` with Debian's /usr/bin/python3, `args` (already shell-safe) and `input_path` as stdin (NULL:
 * none), and returns its stdout (malloc'd, below `cap` bytes). Any failure fails the test, naming `needs` (the
 * packages the script imports).
 */
static inline char *test_script_run(const char *name, const char *args, const char *input_path, size_t cap,
                                    const char *needs)
{
    char path[PATH_MAX];
    test_script_path(name, path, sizeof path);
    size_t command_size = strlen(args) + 2 * PATH_MAX + 64;
    char *command = malloc(command_size);
    assert_non_null(command);
    /* -I: ignore PYTHONPATH/PYTHONHOME that a pyenv shell may export and that would break Debian's python. */
    snprintf(command, command_size, "/usr/bin/python3 -I '%s' %s < '%s'", path, args,
             input_path != NULL ? input_path : "/dev/null");
    FILE *pipe = popen(command, "r");
    if (pipe == NULL)
        fail_msg("cannot start /usr/bin/python3");
    char *output = malloc(cap);
    assert_non_null(output);
    size_t len = fread(output, 1, cap - 1, pipe);
    assert_true(len < cap - 1);
    output[len] = '\0';
    int status = pclose(pipe);
    if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        free(output);
        fail_msg("%s failed (status %d); %s required for /usr/bin/python3: %s", name, status, needs, command);
    }
    free(command);
    return output;
}

#endif
