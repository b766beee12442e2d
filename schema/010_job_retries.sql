-- Dependency errors apart from content errors (issue 10; DESIGN.md §6 rule 4 and §8; docs/workers.md "Retries and
-- dead letters"). A job's attempt that failed because S3, clamd, PostgreSQL, an edge or the temp disk was unavailable
-- says nothing about the file: it must not use one of the FM_JOB_MAX_ATTEMPTS meant for content that cannot be
-- processed, or a 5-second store restart ends a good file FAILED. Such attempts are counted here instead, and the job
-- waits the outage out with a capped backoff, for at most FM_JOB_TRANSIENT_MAX_S in a row.

-- Dependency errors of the current streak (attempts that ended in one, in a row; reset by a content failure and when
-- the job starts afresh from QUEUED), and when the streak began: FM_JOB_TRANSIENT_MAX_S is measured from there.
ALTER TABLE jobs ADD COLUMN transient_retries integer NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN transient_since timestamptz;

-- A failed attempt, with its class. The worker counted the attempt when it started the job (jobs.attempts + 1, so that
-- an attempt whose worker died -- a file that crashes it -- counts); here:
--   * p_transient (a dependency's fault): the attempt is given back (attempts - 1), transient_retries + 1, the streak
--     starts if none runs. Job RETRY, file back to UPLOADED -- unless the streak is older than p_transient_max_s: then
--     FAILED, with a reason that says so.
--   * else (the content's fault, or a worker lost on every attempt): the attempt stays counted and the streak ends.
--     Job RETRY and file UPLOADED while attempts < p_max_attempts, else FAILED.
-- FAILED marks the file FAILED with the reason too; the upload stays UPLOADED (its object is kept for an admin retry).
-- last_error always holds the reason, so GET /v1/jobs/{id} and the admin list show why a job waits or failed.
-- out_final says which; the caller puts a RETRY job on jobs:delayed and a FAILED one on jobs:dead. No row when the job
-- was not RUNNING (another worker moved it on).
--
-- The decision is made here, on the locked row, rather than in the worker: two workers can never disagree on it. The
-- three-argument form of schema 004 stays for workers of the previous version during a rolling upgrade.
CREATE FUNCTION fm_job_attempt_failed(p_job uuid, p_reason text, p_transient boolean, p_max_attempts integer,
                                      p_transient_max_s integer)
RETURNS TABLE (out_final boolean, out_owner uuid, out_type text, out_file uuid, out_upload uuid, out_attempts integer,
               out_transient_retries integer, out_reason text)
LANGUAGE plpgsql AS $$
DECLARE
    j jobs;
    o uuid;
    final boolean;
    reason text := p_reason;
BEGIN
    SELECT * INTO j FROM jobs WHERE id = p_job FOR UPDATE;
    IF NOT FOUND OR j.status <> 'RUNNING' THEN
        RETURN;
    END IF;
    IF p_transient THEN
        j.attempts := greatest(j.attempts - 1, 0);
        j.transient_retries := j.transient_retries + 1;
        j.transient_since := coalesce(j.transient_since, now());
        final := now() - j.transient_since >= make_interval(secs => p_transient_max_s);
        IF final THEN
            reason := format('dependency errors for %s s in a row (FM_JOB_TRANSIENT_MAX_S %s), the last: %s',
                             floor(extract(epoch FROM now() - j.transient_since)), p_transient_max_s, p_reason);
        END IF;
    ELSE
        j.transient_retries := 0;
        j.transient_since := NULL;
        final := j.attempts >= p_max_attempts;
    END IF;
    IF final THEN
        UPDATE files SET status = 'FAILED', status_reason = reason, updated_at = now(), version = version + 1
            WHERE id = j.file_id RETURNING owner_id INTO o;
        UPDATE jobs SET status = 'FAILED', finished_at = now(), last_error = reason, attempts = j.attempts,
                        transient_retries = j.transient_retries, transient_since = j.transient_since
            WHERE id = p_job;
    ELSE
        UPDATE files SET status = 'UPLOADED', status_reason = NULL, updated_at = now(), version = version + 1
            WHERE id = j.file_id RETURNING owner_id INTO o;
        UPDATE jobs SET status = 'RETRY', last_error = reason, attempts = j.attempts,
                        transient_retries = j.transient_retries, transient_since = j.transient_since
            WHERE id = p_job;
    END IF;
    RETURN QUERY SELECT final, o, j.type, j.file_id, j.upload_id, j.attempts, j.transient_retries, reason;
END $$;
