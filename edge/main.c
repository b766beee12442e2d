/*
 * fm-edge: the delivery tier (DESIGN.md §1). For now it starts, answers /healthz and /metrics, and stops
 * gracefully; signed-URL verification, the cache and variants arrive with the downloads issue.
 */
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "server.h"

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "config") == 0) {
        fm_config_print_table(FM_SVC_EDGE, stdout);
        return 0;
    }
    static fm_config_t cfg;
    if (fm_config_load(&cfg, FM_SVC_EDGE, stderr) != 0) {
        fprintf(stderr, "fm-edge: fix the configuration above (see `fm-edge config`)\n");
        return 2;
    }
    fm_log_init("fm-edge", cfg.log_level);
    fm_server_spec_t spec = {
        .service = "fm-edge",
        .bind = cfg.bind,
        .http_port = (int)cfg.edge_http_port,
        .https_port = cfg.tls_cert[0] ? (int)cfg.edge_https_port : 0,
        .tls_cert = cfg.tls_cert,
        .tls_key = cfg.tls_key,
        .threads = (size_t)cfg.threads,
        .offload_threads = (size_t)cfg.offload_threads,
        .max_body_bytes = 65536,
        .graceful_timeout_ms = (uint64_t)cfg.graceful_timeout_ms,
    };
    return fm_server_run(&spec);
}
