/* Offload pool: see offload.h. */
#include "offload.h"

#include <pthread.h>
#include <stdlib.h>

typedef struct job {
    h2o_multithread_message_t message; /* first: the receiver gets it back by this link */
    struct job *next;
    fm_offload_port_t *port;
    void (*work)(void *);
    void (*done)(void *);
    void *data;
} job_t;

struct fm_offload {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    job_t *head, *tail;
    size_t queued, max_queued, thread_count;
    int stopping;
    pthread_t *threads;
};

struct fm_offload_port {
    fm_offload_t *pool;
    h2o_multithread_queue_t *queue;
    h2o_multithread_receiver_t receiver;
    size_t outstanding; /* touched only on the port's loop thread */
};

static void *worker_main(void *arg)
{
    fm_offload_t *pool = arg;
    for (;;) {
        pthread_mutex_lock(&pool->lock);
        while (pool->head == NULL && !pool->stopping)
            pthread_cond_wait(&pool->cond, &pool->lock);
        job_t *job = pool->head;
        if (job == NULL) { /* stopping and drained */
            pthread_mutex_unlock(&pool->lock);
            return NULL;
        }
        pool->head = job->next;
        if (pool->head == NULL)
            pool->tail = NULL;
        pool->queued--;
        pthread_mutex_unlock(&pool->lock);

        job->work(job->data);
        h2o_multithread_send_message(&job->port->receiver, &job->message);
    }
}

fm_offload_t *fm_offload_create(size_t threads, size_t max_queued)
{
    fm_offload_t *pool = calloc(1, sizeof(*pool));
    if (pool == NULL)
        return NULL;
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->cond, NULL);
    pool->max_queued = max_queued;
    pool->threads = calloc(threads, sizeof(pthread_t));
    if (pool->threads == NULL) {
        free(pool);
        return NULL;
    }
    for (; pool->thread_count < threads; pool->thread_count++)
        if (pthread_create(&pool->threads[pool->thread_count], NULL, worker_main, pool) != 0)
            break;
    if (pool->thread_count == 0) {
        fm_offload_destroy(pool);
        return NULL;
    }
    return pool;
}

void fm_offload_destroy(fm_offload_t *pool)
{
    if (pool == NULL)
        return;
    pthread_mutex_lock(&pool->lock);
    pool->stopping = 1;
    pthread_cond_broadcast(&pool->cond);
    pthread_mutex_unlock(&pool->lock);
    for (size_t i = 0; i < pool->thread_count; ++i)
        pthread_join(pool->threads[i], NULL);
    pthread_mutex_destroy(&pool->lock);
    pthread_cond_destroy(&pool->cond);
    free(pool->threads);
    free(pool);
}

static void on_done(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    while (!h2o_linklist_is_empty(messages)) {
        job_t *job = H2O_STRUCT_FROM_MEMBER(job_t, message.link, messages->next);
        h2o_linklist_unlink(&job->message.link);
        job->port->outstanding--;
        job->done(job->data);
        free(job);
    }
}

fm_offload_port_t *fm_offload_port_create(fm_offload_t *pool, h2o_loop_t *loop)
{
    fm_offload_port_t *port = calloc(1, sizeof(*port));
    if (port == NULL)
        return NULL;
    port->pool = pool;
    port->queue = h2o_multithread_create_queue(loop);
    h2o_multithread_register_receiver(port->queue, &port->receiver, on_done);
    return port;
}

void fm_offload_port_destroy(fm_offload_port_t *port)
{
    if (port == NULL)
        return;
    h2o_multithread_unregister_receiver(port->queue, &port->receiver);
    h2o_multithread_destroy_queue(port->queue);
    free(port);
}

int fm_offload_run(fm_offload_port_t *port, void (*work)(void *), void (*done)(void *), void *data)
{
    fm_offload_t *pool = port->pool;
    job_t *job = calloc(1, sizeof(*job));
    if (job == NULL)
        return -1;
    *job = (job_t){.port = port, .work = work, .done = done, .data = data};
    pthread_mutex_lock(&pool->lock);
    if (pool->queued >= pool->max_queued || pool->stopping) {
        pthread_mutex_unlock(&pool->lock);
        free(job);
        return -1;
    }
    if (pool->tail != NULL)
        pool->tail->next = job;
    else
        pool->head = job;
    pool->tail = job;
    pool->queued++;
    port->outstanding++;
    pthread_cond_signal(&pool->cond);
    pthread_mutex_unlock(&pool->lock);
    return 0;
}

size_t fm_offload_queued(fm_offload_t *pool)
{
    pthread_mutex_lock(&pool->lock);
    size_t n = pool->queued;
    pthread_mutex_unlock(&pool->lock);
    return n;
}

size_t fm_offload_port_outstanding(fm_offload_port_t *port)
{
    return port->outstanding;
}
