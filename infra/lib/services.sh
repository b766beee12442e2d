# shellcheck shell=bash
# Files Manager's own services (fm-control, fm-edge, fm-worker) on top of the local stack: secrets and the TLS
# certificate made once per data folder, start/stop by PID. Sourced by infra/up and infra/down.
#   services_env DATA PORTS…   `export` lines: stack env + secrets + service settings
#   services_start DATA BUILD  migrate, start the three services, wait for health
#   services_stop DATA         SIGTERM by PID, wait (graceful), SIGKILL after 30 s; stops the log rotator too
#   services_rotator_start DATA   stack_rotate_logs every FM_LOG_ROTATE_INTERVAL_S (30) s in the background
#                                 (infra/up, also with --detach)
# Everything made here is private (umask 077, folders 0700), like the stack's own files (infra/lib/stack.sh).

SERVICES=(fm-control fm-edge fm-worker)

# Secrets made once per data folder (never printed): the JWT key and the S3-events webhook secret.
services_secrets() {
  local data="$1" file="$1/secrets.env"
  if [ ! -f "$file" ]; then
    umask 077
    {
      echo "FM_JWT_SECRET=$(openssl rand -hex 32)"
      echo "FM_EVENTS_SECRET=$(openssl rand -hex 24)"
    } > "$file"
  fi
  cat "$file"
}

# The CloudFront key pair of download URLs (docs/downloads.md "Download URLs"), made once per data folder like the
# secrets: fm-control signs with the private key (FM_CF_KEYS), fm-edge verifies with the public one
# (FM_EDGE_CF_PUBLIC_KEYS). The Key-Pair-Id is derived from the public key, so a new pair gets a new id (rotation).
# Prints "KEY_PAIR_ID DIR".
services_cf_keys() {
  local dir="$1/cloudfront"
  if [ ! -s "$dir/private.pem" ] || [ ! -s "$dir/public.pem" ] || [ ! -s "$dir/key_pair_id" ]; then
    mkdir -p "$dir"
    chmod 700 "$dir"
    (umask 077 && openssl genrsa -out "$dir/private.pem" 2048 2>/dev/null) || return 1
    openssl rsa -in "$dir/private.pem" -pubout -out "$dir/public.pem" 2>/dev/null || return 1
    chmod 600 "$dir/private.pem" "$dir/public.pem"
    echo "K$(openssl pkey -pubin -in "$dir/public.pem" -outform DER | sha256sum | cut -c1-13 | tr a-f A-F)" \
      > "$dir/key_pair_id"
  fi
  echo "$(cat "$dir/key_pair_id") $dir"
}

# A self-signed certificate for localhost when none is configured (DESIGN.md §5).
services_tls() {
  local dir="$1/tls"
  if [ ! -s "$dir/cert.pem" ]; then
    mkdir -p "$dir" && chmod 700 "$dir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 825 \
      -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
      -keyout "$dir/key.pem" -out "$dir/cert.pem" >/dev/null 2>&1
    chmod 600 "$dir/key.pem"
  fi
  echo "$dir"
}

services_env() {
  local data="$1" stack_lines clamd
  stack_lines="$(stack_env "$data")" || return 1
  echo "$stack_lines"
  # fm-worker's virus scan: the stack's clamd (stack_env names it FM_CLAMD_ADDR=host:port).
  clamd="$(sed -n "s/^export FM_CLAMD_ADDR='\(.*\)'$/\1/p" <<< "$stack_lines")"
  if [ -n "$clamd" ]; then
    echo "export FM_CLAMD_HOST=${clamd%:*}"
    echo "export FM_CLAMD_PORT=${clamd##*:}"
  fi
  local line
  while IFS= read -r line; do echo "export $line"; done < <(services_secrets "$data")
  services_edge_env "$data"
  local tls
  tls="$(services_tls "$data")"
  echo "export FM_TLS_CERT=${FM_TLS_CERT:-$tls/cert.pem}"
  echo "export FM_TLS_KEY=${FM_TLS_KEY:-$tls/key.pem}"
  local cf cf_id cf_dir
  cf="$(services_cf_keys "$data")" || return 1
  cf_id="${cf%% *}" cf_dir="${cf#* }"
  echo "export FM_CF_KEYS=${FM_CF_KEYS:-$cf_id=$cf_dir/private.pem}"
  echo "export FM_EDGE_CF_PUBLIC_KEYS=${FM_EDGE_CF_PUBLIC_KEYS:-$cf_id=$cf_dir/public.pem}"
  echo "export FM_EDGE_PUBLIC_BASE=${FM_EDGE_PUBLIC_BASE:-http://127.0.0.1:${FM_EDGE_HTTP_PORT:-8081}}"
}

# fm-edge (docs/downloads.md "fm-edge"): its purge secret and its cache folder, made once per data folder (the key
# pair it trusts is services_cf_keys'). The same secret goes to fm-worker (the environment is shared), whose
# purge_edge jobs POST /_edge/purge to every base URL of FM_EDGE_PURGE_URLS: the local edge unless told otherwise.
services_edge_env() {
  local data="$1" dir="$1/edge"
  mkdir -p "$dir" && chmod 700 "$dir"
  [ -s "$dir/purge.secret" ] || (umask 077 && openssl rand -hex 24 > "$dir/purge.secret")
  echo "export FM_EDGE_PURGE_SECRET=$(cat "$dir/purge.secret")"
  echo "export FM_EDGE_CACHE_DIR=${FM_EDGE_CACHE_DIR:-$dir/cache}"
  echo "export FM_EDGE_PURGE_URLS=${FM_EDGE_PURGE_URLS:-http://127.0.0.1:${FM_EDGE_HTTP_PORT:-8081}}"
}

_service_pidfile() { echo "$1/run/$2.pid"; }

_service_running() {
  local pidfile pid
  pidfile="$(_service_pidfile "$1" "$2")"
  [ -f "$pidfile" ] || return 1
  pid="$(cat "$pidfile")"
  [ -n "$pid" ] && [ -d "/proc/$pid" ] && grep -q "$2" "/proc/$pid/cmdline" 2>/dev/null
}

_wait_http() {
  local url="$1" seconds="$2" i
  for ((i = 0; i < seconds * 10; i++)); do
    curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# services_start DATA BUILD_DIR: assumes the stack is up and services_env has been eval'd.
services_start() {
  local data="$1" build="$2" svc port
  mkdir -p "$data/run" "$data/logs"
  (umask 077 && exec "$build/fm-control" migrate >> "$data/logs/migrate.log" 2>&1) || {
    echo "up: migrations failed, see $data/logs/migrate.log" >&2
    tail -5 "$data/logs/migrate.log" >&2
    return 1
  }
  for svc in "${SERVICES[@]}"; do
    if _service_running "$data" "$svc"; then
      echo "up: $svc already running (pid $(cat "$(_service_pidfile "$data" "$svc")"))"
      continue
    fi
    # umask 077: the log and what the service makes (the edge's cache files) are readable by us only
    (umask 077 && exec setsid "$build/$svc" >> "$data/logs/$svc.log" 2>&1 < /dev/null) &
    echo $! > "$(_service_pidfile "$data" "$svc")"
  done
  for svc in "${SERVICES[@]}"; do
    case "$svc" in
      fm-control) port="${FM_HTTP_PORT:-8080}" ;;
      fm-edge) port="${FM_EDGE_HTTP_PORT:-8081}" ;;
      fm-worker) port="${FM_WORKER_HEALTH_PORT:-8082}" ;;
    esac
    if ! _wait_http "http://127.0.0.1:$port/healthz" 20; then
      echo "up: $svc did not become healthy on port $port; last log lines:" >&2
      tail -20 "$data/logs/$svc.log" >&2
      return 1
    fi
  done
}

# The rotator is a bash loop in a session of its own (named fm-log-rotate in its command line); the stack's logs
# and the services' are all appended to (O_APPEND), so stack_rotate_logs copies and truncates them in place.
services_rotator_start() {
  local data="$1"
  _service_running "$data" fm-log-rotate && return 0
  # shellcheck disable=SC2016 # expanded by the inner bash
  local every="${FM_LOG_ROTATE_INTERVAL_S:-30}"
  [[ $every =~ ^[1-9][0-9]*$ ]] || { echo "up: FM_LOG_ROTATE_INTERVAL_S must be a number of seconds" >&2; return 1; }
  (umask 077 && exec setsid bash -c 'source "$1" && while sleep "$3"; do stack_rotate_logs "$2" || true; done' \
     fm-log-rotate "$STACK_REPO_ROOT/infra/lib/stack.sh" "$data" "$every" < /dev/null >> "$data/logs/log-rotate.log" 2>&1) &
  echo $! > "$(_service_pidfile "$data" fm-log-rotate)"
}

services_rotator_stop() {
  local data="$1" pidfile pid
  pidfile="$(_service_pidfile "$data" fm-log-rotate)"
  if _service_running "$data" fm-log-rotate; then
    pid="$(cat "$pidfile")"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true  # its group: bash and its sleep
  fi
  rm -f "$pidfile"
}

services_stop() {
  local data="$1" svc pidfile pid i
  services_rotator_stop "$data"
  for svc in "${SERVICES[@]}"; do
    pidfile="$(_service_pidfile "$data" "$svc")"
    _service_running "$data" "$svc" || { rm -f "$pidfile"; continue; }
    pid="$(cat "$pidfile")"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
      [ -d "/proc/$pid" ] || break
      sleep 0.1
    done
    if [ -d "/proc/$pid" ]; then
      echo "down: $svc (pid $pid) did not stop in 30 s, killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
}
