/* The job record the steps fill (worker.h). */
#include <stdlib.h>
#include <unistd.h>

#include "worker.h"

void fm_job_clear(fm_job_t *job)
{
    cJSON_Delete(job->meta);
    cJSON_Delete(job->variants);
    free(job->text);
    job->meta = NULL;
    job->variants = NULL;
    job->text = NULL;
    job->text_len = 0;
    if (job->path[0] != '\0')
        unlink(job->path);
    job->path[0] = '\0';
}
