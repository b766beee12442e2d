/*
 * fm-worker: post-processing (DESIGN.md §1). For now it starts, answers /healthz and /metrics on its health
 * port, and stops gracefully; the job consumer and the Lambda runtime arrive with the workers issue.
 */
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "server.h"

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "config") == 0) {
        fm_config_print_table(FM_SVC_WORKER, stdout);
        return 0;
    }
    static fm_config_t cfg;
    if (fm_config_load(&cfg, FM_SVC_WORKER, stderr) != 0) {
        fprintf(stderr, "fm-worker: fix the configuration above (see `fm-worker config`)\n");
        return 2;
    }
    fm_log_init("fm-worker", cfg.log_level);
    fm_server_spec_t spec = {
        .service = "fm-worker",
        .bind = cfg.bind,
        .http_port = (int)cfg.worker_health_port,
        .threads = 1,
        .offload_threads = 1,
        .max_body_bytes = 65536,
        .graceful_timeout_ms = (uint64_t)cfg.graceful_timeout_ms,
    };
    return fm_server_run(&spec);
}
