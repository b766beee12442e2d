/*
 * The control plane's S3 clients: the settings from FM_S3_* (fm_s3_config, also used by health.c's readiness check)
 * and one blocking client per offload thread (fm_offload_s3), for work functions on the offload pool only. The
 * presigned URLs handed to clients are made on the loop by common/sigv4.c, not here.
 */
#include <pthread.h>

#include "control.h"
#include "log.h"

/* One S3 client per offload thread (fm_s3_t keeps one curl handle with its keep-alive connection and is not
 * thread-safe); freed by the key's destructor when the thread ends. */
static pthread_key_t s3_key;
static pthread_once_t s3_key_once = PTHREAD_ONCE_INIT;

static void s3_free(void *s3)
{
    fm_s3_free(s3);
}

static void s3_key_make(void)
{
    pthread_key_create(&s3_key, s3_free);
}

fm_s3_t *fm_offload_s3(void)
{
    pthread_once(&s3_key_once, s3_key_make);
    fm_s3_t *s3 = pthread_getspecific(s3_key);
    if (s3 != NULL)
        return s3;
    fm_s3_config_t s3cfg = fm_s3_config(2000, 20000);
    char err[160];
    if ((s3 = fm_s3_new(&s3cfg, err, sizeof(err))) == NULL) {
        fm_error("s3: cannot create a client: %s", err);
        return NULL;
    }
    pthread_setspecific(s3_key, s3);
    return s3;
}

fm_s3_config_t fm_s3_config(long connect_timeout_ms, long timeout_ms)
{
    return fm_s3_config_from(&fm_control->config, connect_timeout_ms, timeout_ms);
}
