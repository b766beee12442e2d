# shellcheck shell=bash
# The local stack of Files Manager: PostgreSQL 15, Redis 7, Ceph RGW (mon + osd + radosgw) and clamd, all on
# 127.0.0.1, all under one data folder. Sourced by infra/stack, infra/up, infra/test and the pytest fixtures
# (tests/integration/stackfixture.py). Bash >= 4.4. Works under `set -euo pipefail` in the caller.
#
# Public functions (DATA is optional everywhere; default $FM_STACK_DIR, else <repo>/.local):
#   stack_start DATA          start everything (in parallel), wait until each service answers; idempotent
#   stack_stop DATA           stop everything by PID (radosgw, then osd, then mon), wait for exit; idempotent
#   stack_status DATA         one line per service; returns 0 only when all are running and answering
#   stack_env DATA            `export FM_...=...` lines for the services (eval them)
#   stack_s3_prepare DATA [s3_prepare.py options]   bucket, CORS, public-access block and bucket policy, event
#                             topic + notification (see s3_prepare.py)
#   stack_rotate_logs DATA    copy-and-truncate every log in DATA/logs above FM_LOG_ROTATE_BYTES (see below)
#   stack_start_pg / stack_stop_pg, stack_start_redis / stack_stop_redis, stack_start_ceph / stack_stop_ceph,
#   stack_start_clamd / stack_stop_clamd   one service each (DATA as argument)
#
# Layout of DATA:
#   stack.env       settings remembered for this folder (ports, bucket, generated S3 keys), KEY=VALUE lines
#   logs/           every service's log     run/  *.pid (one per process)
#   pg/data  pg/sock   redis/   ceph/ (ceph.conf, mon-a, osd-0, osd-0.block sparse file, run, rgw)   clamav/
# Private: DATA itself is 0710 root:postgres (0711 when that group cannot be set): PostgreSQL's user must pass
# through it to pg/, nobody may list it. Every folder in it is 0700 and every log 0600: the logs hold request lines,
# and with RGW's debug raised (FM_RGW_DEBUG) presigned URLs and the events webhook secret. Daemons start with umask
# 077, so what they create is private from the first byte.
#
# Ports come from the environment the first time a folder is used and are then remembered in DATA/stack.env;
# setting the variable again later changes it, except FM_CEPH_MON_PORT which is fixed once the cluster exists
# (it is baked into the monitor map). Variables and defaults:
#   FM_PG_PORT 15432, FM_REDIS_PORT 16379, FM_RGW_PORT 17480, FM_CEPH_MON_PORT 13300,
#   FM_CEPH_PORT_MIN 16800 / FM_CEPH_PORT_MAX 16830 (ceph messenger range), FM_CLAMD_PORT 13310,
#   FM_S3_BUCKET files-manager.
# Not remembered (read at each start): FM_PG_FSYNC (on|off, default on; tests use off); FM_RGW_DEBUG (RGW's
# `debug rgw` level, default 0/0: at level 1 RGW logs every request line with its query string, i.e. whole presigned
# URLs, and the events webhook URL with its secret; raise it only to diagnose, then delete the log).
# Log rotation (stack_rotate_logs, run every FM_LOG_ROTATE_INTERVAL_S = 30 s by infra/up): FM_LOG_ROTATE_BYTES
# (default 67108864 = 64 MiB; 0 = never) and FM_LOG_ROTATE_KEEP (old copies kept, default 2: x.log.1, x.log.2).
#
# Nothing is ever stopped by process name: only PIDs recorded in DATA/run, checked against /proc first.

STACK_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
STACK_PG_BIN="${STACK_PG_BIN:-/usr/lib/postgresql/15/bin}"
STACK_PYTHON="${STACK_PYTHON:-/usr/bin/python3}"
STACK_DB_NAME=files_manager
STACK_RGW_UID=files-manager

_stack_defaults=(
  FM_PG_PORT=15432 FM_REDIS_PORT=16379 FM_RGW_PORT=17480 FM_CEPH_MON_PORT=13300
  FM_CEPH_PORT_MIN=16800 FM_CEPH_PORT_MAX=16830 FM_CLAMD_PORT=13310 FM_S3_BUCKET=files-manager
)

_stack_msg() { printf 'stack: %s\n' "$*" >&2; }
_stack_err() { printf 'stack: error: %s\n' "$*" >&2; }  # prints only: callers return 1 themselves
_stack_now() { printf '%s' "${EPOCHREALTIME/,/.}"; }
_stack_since() { awk -v a="$1" -v b="$(_stack_now)" 'BEGIN { printf "%.1f s", b - a }'; }
_stack_tail() { [ -f "$1" ] && { printf 'stack: --- last lines of %s ---\n' "$1"; tail -n "${2:-15}" "$1"; } >&2; return 0; }

# _stack_private: the modes of the header's "Private" paragraph, applied to what exists (folders and files made
# before this rule, or by a command run without umask 077): the folder, its folders, and the files in it, in logs/
# and in run/. Three processes when nothing is to change (it runs at every _stack_use and every rotation).
_stack_private() {
  if [ "$(stat -c '%a %G' "$_SD")" != "710 postgres" ]; then
    if ! { chgrp postgres "$_SD" 2> /dev/null && chmod 710 "$_SD"; }; then
      chmod 711 "$_SD" || { _stack_err "cannot set the mode of $_SD"; return 1; }
    fi
  fi
  find "$_SD" -mindepth 1 -maxdepth 1 -type d ! -name pg -perm /077 -exec chmod 700 {} + &&
  find "$_SD" "$_SD/logs" "$_SD/run" -maxdepth 1 -type f -perm /077 -exec chmod go-rwx {} +
}

# _stack_use DATA: resolve the data folder (absolute, created) into _SD and load its settings into _SK.
_stack_use() {
  local d="${1:-${FM_STACK_DIR:-$STACK_REPO_ROOT/.local}}"
  mkdir -p "$d" || { _stack_err "cannot create data folder $d"; return 1; }
  _SD="$(cd "$d" && pwd -P)" || return 1
  mkdir -p "$_SD/logs" "$_SD/run" || return 1
  _stack_private || return 1
  declare -gA _SK=()
  local f="$_SD/stack.env" k v kv old=""
  if [ -f "$f" ]; then
    old="$(cat "$f")"
    while IFS='=' read -r k v || [ -n "$k" ]; do
      [[ $k =~ ^FM_[A-Z0-9_]+$ ]] && _SK[$k]="$v"
    done < "$f"
  fi
  for kv in "${_stack_defaults[@]}"; do
    k="${kv%%=*}"
    if [ -n "${!k:-}" ]; then
      if [ "$k" = FM_CEPH_MON_PORT ] && [ -e "$_SD/ceph/created" ] && [ -n "${_SK[$k]:-}" ] &&
         [ "${!k}" != "${_SK[$k]}" ]; then
        _stack_msg "FM_CEPH_MON_PORT=${!k} ignored: the cluster in $_SD/ceph was made with ${_SK[$k]}"
      else
        _SK[$k]="${!k}"
      fi
    elif [ -z "${_SK[$k]:-}" ]; then
      _SK[$k]="${kv#*=}"
    fi
  done
  # S3 credentials: generated once per data folder, never taken from the environment.
  [ -n "${_SK[FM_S3_ACCESS_KEY]:-}" ] || _SK[FM_S3_ACCESS_KEY]="FM$(od -An -N9 -tx1 /dev/urandom | tr -d ' \n' | tr a-f A-F)"
  [ -n "${_SK[FM_S3_SECRET_KEY]:-}" ] || _SK[FM_S3_SECRET_KEY]="$(od -An -N20 -tx1 /dev/urandom | tr -d ' \n')"
  local p
  for p in FM_PG_PORT FM_REDIS_PORT FM_RGW_PORT FM_CEPH_MON_PORT FM_CEPH_PORT_MIN FM_CEPH_PORT_MAX FM_CLAMD_PORT; do
    [[ ${_SK[$p]} =~ ^[0-9]+$ ]] && [ "${_SK[$p]}" -ge 1 ] && [ "${_SK[$p]}" -le 65535 ] ||
      { _stack_err "$p=${_SK[$p]} is not a port"; return 1; }
  done
  [ "${_SK[FM_CEPH_PORT_MAX]}" -ge "$(( _SK[FM_CEPH_PORT_MIN] + 5 ))" ] ||
    { _stack_err "FM_CEPH_PORT_MIN..MAX must span at least 6 ports"; return 1; }
  local new
  new="$(for k in $(printf '%s\n' "${!_SK[@]}" | sort); do printf '%s=%s\n' "$k" "${_SK[$k]}"; done)"
  if [ "$new" != "$old" ]; then
    (umask 077 && printf '%s\n' "$new" > "$f.tmp.$$") && mv -f "$f.tmp.$$" "$f" ||
      { _stack_err "cannot write $f"; return 1; }
  fi
  return 0
}

# --- processes ---------------------------------------------------------------------------------------------

# _stack_alive PID: the process exists and is not a zombie.
_stack_alive() {
  local pid="$1" st
  [[ $pid =~ ^[0-9]+$ ]] && [ -r "/proc/$pid/stat" ] || return 1
  st="$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null)" || return 1
  st="${st%% *}"
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

# _stack_pid NAME: print the recorded PID of NAME when that process is alive and is really ours (its
# executable and command line match what we started), else return 1.
_stack_pid() {
  local name="$1" f="$_SD/run/$1.pid" pid exe cmd want_exe want_cmd
  # a postmaster whose run/pg.pid was lost is still found (and then checked like any other)
  [ "$name" != pg ] || [ -f "$f" ] || f="$_SD/pg/data/postmaster.pid"
  [ -f "$f" ] || return 1
  read -r pid < "$f" || [ -n "${pid:-}" ] || return 1
  _stack_alive "$pid" || return 1
  case "$name" in
    pg)     want_exe="$STACK_PG_BIN/postgres"; want_cmd="$_SD/pg/data" ;;
    redis)  want_exe=/usr/bin/redis-;             want_cmd="127.0.0.1:${_SK[FM_REDIS_PORT]}" ;;
    clamd)  want_exe=clamd;                    want_cmd="$_SD/clamav/clamd.conf" ;;
    ceph-mon|ceph-osd|radosgw) want_exe="$name"; want_cmd="$_SD/ceph/ceph.conf" ;;
    *)      want_exe=""; want_cmd="" ;;
  esac
  exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || exe=""
  cmd="$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null)" || cmd=""
  [ -z "$want_exe" ] || [[ $exe == *"$want_exe"* ]] || return 1
  [ -z "$want_cmd" ] || [[ "$cmd " == *" $want_cmd "* ]] || return 1  # a whole argument, not a substring
  printf '%s\n' "$pid"
}

# _stack_spawn NAME LOG CMD...: start CMD detached (own session, no terminal, stdio to LOG), record its PID.
_stack_spawn() {
  local -
  set +m  # without job control the background child is no group leader: setsid does not fork, $! is the daemon
  local name="$1" log="$2"
  shift 2
  # umask 077: the log opened here and every file the daemon makes (its own logs, sockets, data) are private
  (umask 077 && exec setsid "$@" < /dev/null >> "$log" 2>&1) &
  printf '%s\n' "$!" > "$_SD/run/$name.pid"
}

# _stack_kill NAME [TIMEOUT_S]: SIGTERM the recorded PID, wait for it to exit, SIGKILL after TIMEOUT_S.
_stack_kill() {
  local name="$1" timeout="${2:-30}" pid i
  if pid="$(_stack_pid "$name")"; then
    kill -TERM "$pid" 2>/dev/null || true
    for (( i = 0; i < timeout * 10; i++ )); do
      _stack_alive "$pid" || break
      sleep 0.1
    done
    if _stack_alive "$pid"; then
      _stack_msg "$name (pid $pid) still running after ${timeout} s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for (( i = 0; i < 50; i++ )); do _stack_alive "$pid" || break; sleep 0.1; done
    fi
    _stack_alive "$pid" && { _stack_err "$name (pid $pid) does not exit"; return 1; }
  fi
  rm -f "$_SD/run/$name.pid"
  return 0
}

# _stack_port_busy PORT: something accepts TCP connections on 127.0.0.1:PORT.
_stack_port_busy() { (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null; }

_stack_check_port() {  # PORT WHAT
  if _stack_port_busy "$1"; then
    _stack_err "127.0.0.1:$1 (for $2) is already in use by another process (set another port, see infra/lib/stack.sh)"
    return 1
  fi
}

# _stack_wait WHAT TIMEOUT_S LOG PID_NAME CMD...: run CMD every 0.1 s until it succeeds, failing early when
# the process recorded in run/PID_NAME.pid is gone. Only liveness is checked here, not _stack_pid's identity
# test: a child just spawned may not have exec'd yet, and Redis renames its command line after start.
_stack_wait() {
  local what="$1" timeout="$2" log="$3" pidname="$4" deadline pid=""
  shift 4
  deadline=$(( EPOCHSECONDS + timeout ))
  [ -z "$pidname" ] || read -r pid < "$_SD/run/$pidname.pid" || true
  until "$@" > /dev/null 2>&1; do
    if [ -n "$pidname" ] && ! _stack_alive "$pid"; then
      _stack_err "$what exited during start"; _stack_tail "$log"; return 1
    fi
    if [ "$EPOCHSECONDS" -ge "$deadline" ]; then
      _stack_err "$what does not answer after ${timeout} s"; _stack_tail "$log"; return 1
    fi
    sleep 0.1
  done
}

# --- PostgreSQL 15 -----------------------------------------------------------------------------------------

_stack_pg_ready() { pg_isready -q -h 127.0.0.1 -p "${_SK[FM_PG_PORT]}" -t 2; }
_stack_psql() {  # DB SQL
  PGCONNECT_TIMEOUT=5 PGOPTIONS="-c client_min_messages=warning" psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "${_SK[FM_PG_PORT]}" -U postgres -d "$1" -tAc "$2"
}

stack_start_pg() {
  _stack_use "${1:-}" || return 1
  local t0 pg="$_SD/pg" pgdata="$_SD/pg/data" log="$_SD/logs/postgresql.log" port="${_SK[FM_PG_PORT]}" pid
  t0="$(_stack_now)"
  if pid="$(_stack_pid pg)"; then printf '%s\n' "$pid" > "$_SD/run/pg.pid"; return 0; fi
  _stack_check_port "$port" PostgreSQL || return 1
  id -u postgres > /dev/null 2>&1 || { _stack_err "no user postgres (run infra/setup)"; return 1; }
  # The log stays root's (0600, in the 0700 logs/): the server writes to the descriptor pg_ctl inherits from us.
  mkdir -p "$pg/sock" && (umask 077 && touch "$log") && chown postgres: "$pg" "$pg/sock" && chmod 700 "$pg" || return 1
  if ! runuser -u postgres -- test -w "$pg"; then
    _stack_err "user postgres cannot reach $pg: make the parent folders searchable (chmod o+x)"; return 1
  fi
  if [ ! -f "$pgdata/PG_VERSION" ]; then
    rm -rf "$pgdata"
    (cd / && runuser -u postgres -- "$STACK_PG_BIN/initdb" -D "$pgdata" -A trust -U postgres -E UTF8 \
        --locale=C.UTF-8 --no-sync) >> "$log" 2>&1 || { _stack_err "initdb failed"; _stack_tail "$log"; return 1; }
    printf "\ninclude_if_exists = 'files_manager.conf'\n" >> "$pgdata/postgresql.conf"
  fi
  # Unix socket too (convenience); skipped when the path would be longer than the 107-byte sun_path.
  local sockdir="$pg/sock" fsync="${FM_PG_FSYNC:-on}"
  [ ${#sockdir} -le 90 ] || sockdir=""
  case "$fsync" in on|off) ;; *) _stack_err "FM_PG_FSYNC must be on or off"; return 1 ;; esac
  cat > "$pgdata/files_manager.conf" <<EOF
# written by infra/lib/stack.sh at each start
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$sockdir'
max_connections = 200
fsync = $fsync
synchronous_commit = $fsync
full_page_writes = $fsync
log_line_prefix = '%m [%p] %q%u@%d '
log_timezone = 'UTC'
timezone = 'UTC'
EOF
  chown postgres: "$pgdata/files_manager.conf"
  if ! (cd / && umask 077 && runuser -u postgres -- "$STACK_PG_BIN/pg_ctl" -D "$pgdata" -w -t 60 start) >> "$log" 2>&1; then
    _stack_err "PostgreSQL does not start"; _stack_tail "$log"; return 1
  fi
  read -r pid < "$pgdata/postmaster.pid" && printf '%s\n' "$pid" > "$_SD/run/pg.pid"
  _stack_wait PostgreSQL 30 "$log" pg _stack_pg_ready || return 1
  if [ "$(_stack_psql postgres "SELECT 1 FROM pg_database WHERE datname = '$STACK_DB_NAME'")" != 1 ]; then
    _stack_psql postgres "CREATE DATABASE $STACK_DB_NAME" || { _stack_err "cannot create database"; return 1; }
  fi
  _stack_psql "$STACK_DB_NAME" "CREATE EXTENSION IF NOT EXISTS pgcrypto; CREATE EXTENSION IF NOT EXISTS pg_trgm" ||
    { _stack_err "cannot create extensions pgcrypto, pg_trgm"; return 1; }
  _stack_msg "PostgreSQL ready on 127.0.0.1:$port ($(_stack_since "$t0"))"
}

stack_stop_pg() {
  _stack_use "${1:-}" || return 1
  local pid pgdata="$_SD/pg/data"
  pid="$(_stack_pid pg)" || { rm -f "$_SD/run/pg.pid"; return 0; }
  (cd / && runuser -u postgres -- "$STACK_PG_BIN/pg_ctl" -D "$pgdata" -m fast -w -t 60 stop) \
    >> "$_SD/logs/pg_ctl.log" 2>&1 || true
  _stack_kill pg 10
}

# --- Redis 7 -----------------------------------------------------------------------------------------------

_stack_redis_ready() { [ "$(redis-cli -h 127.0.0.1 -p "${_SK[FM_REDIS_PORT]}" ping 2>/dev/null)" = PONG ]; }

stack_start_redis() {
  _stack_use "${1:-}" || return 1
  local t0 port="${_SK[FM_REDIS_PORT]}" conf="$_SD/redis/redis.conf" log="$_SD/logs/redis.log"
  t0="$(_stack_now)"
  if _stack_pid redis > /dev/null; then return 0; fi
  _stack_check_port "$port" Redis || return 1
  mkdir -p "$_SD/redis" || return 1
  cat > "$conf" <<EOF
# written by infra/lib/stack.sh at each start
bind 127.0.0.1
port $port
protected-mode yes
daemonize no
supervised no
dir $_SD/redis
logfile $log
appendonly yes
appendfsync everysec
save 3600 1 300 100 60 10000
# the integration suite gives each module's instances a database of their own
databases 64
EOF
  _stack_spawn redis "$log" redis-server "$conf"
  _stack_wait Redis 30 "$log" redis _stack_redis_ready || return 1
  _stack_msg "Redis ready on 127.0.0.1:$port ($(_stack_since "$t0"))"
}

stack_stop_redis() {
  _stack_use "${1:-}" || return 1
  _stack_kill redis 30  # SIGTERM: Redis flushes the append-only file and exits
}

# --- clamd -------------------------------------------------------------------------------------------------

_stack_clamd_ping() {
  local r=""
  exec 3<> "/dev/tcp/127.0.0.1/${_SK[FM_CLAMD_PORT]}" || return 1
  printf 'nPING\n' >&3 && read -r -t 3 r <&3
  exec 3>&-
  [ "$r" = PONG ]
}
_stack_clamd_ready() { (_stack_clamd_ping) 2> /dev/null; }

stack_start_clamd() {
  _stack_use "${1:-}" || return 1
  local t0 port="${_SK[FM_CLAMD_PORT]}" dir="$_SD/clamav" log="$_SD/logs/clamd.log"
  local sig="$STACK_REPO_ROOT/infra/clamav/fm-test.ndb"
  t0="$(_stack_now)"
  if _stack_pid clamd > /dev/null; then return 0; fi
  _stack_check_port "$port" clamd || return 1
  [ -f "$sig" ] || { _stack_err "missing $sig"; return 1; }
  mkdir -p "$dir/db" "$dir/tmp" || return 1
  # The database folder holds the project's test signature only: no freshclam, no internet.
  find "$dir/db" -mindepth 1 -delete && cp "$sig" "$dir/db/" || return 1
  cat > "$dir/clamd.conf" <<EOF
# written by infra/lib/stack.sh at each start
DatabaseDirectory $dir/db
TemporaryDirectory $dir/tmp
TCPSocket $port
TCPAddr 127.0.0.1
Foreground yes
LogFile $log
LogTime yes
SelfCheck 3600
ConcurrentDatabaseReload no
StreamMaxLength 512M
MaxScanSize 512M
MaxFileSize 512M
EOF
  _stack_spawn clamd "$log" clamd -c "$dir/clamd.conf"
  _stack_wait clamd 60 "$log" clamd _stack_clamd_ready || return 1
  _stack_msg "clamd ready on 127.0.0.1:$port ($(_stack_since "$t0"))"
}

stack_stop_clamd() {
  _stack_use "${1:-}" || return 1
  _stack_kill clamd 15
}

# --- Ceph RGW (single-node cluster: mon.a, osd.0, client.rgw.a) --------------------------------------------

_stack_ceph() { ceph -c "$_SD/ceph/ceph.conf" --connect-timeout 60 "$@"; }
_stack_rgw_ready() {
  [ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:${_SK[FM_RGW_PORT]}/")" = 200 ]
}

_stack_ceph_conf() {
  local c="$_SD/ceph" l="$_SD/logs" fsid
  [[ ${FM_RGW_DEBUG:-0/0} =~ ^[0-9]{1,2}(/[0-9]{1,2})?$ ]] || { _stack_err "FM_RGW_DEBUG must read like 0/0 or 1/5"; return 1; }
  read -r fsid < "$c/fsid" || return 1
  cat > "$c/ceph.conf.tmp" <<EOF
# written by infra/lib/stack.sh at each start (see docs in shared notes: local-s3-store)
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:${_SK[FM_CEPH_MON_PORT]}]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
ms bind msgr2 = true
ms bind port min = ${_SK[FM_CEPH_PORT_MIN]}
ms bind port max = ${_SK[FM_CEPH_PORT_MAX]}
ms mon client mode = crc secure
auth cluster required = none
auth service required = none
auth client required = none
keyring = $c/keyring
run dir = $c/run
crash dir = $c/crash
log file = $l/ceph-\$name.log
mon cluster log file = $l/ceph-cluster.log
mon data = $c/mon-\$id
osd data = $c/osd-\$id
osd objectstore = bluestore
bluestore block path = $c/osd-\$id.block
bluestore block create = true
bluestore block size = 8589934592
osd memory target = 939524096
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
# quicker start: commit monitor changes after 0.1 s instead of 1 s (each new RGW pool takes two of them)
paxos propose interval = 0.1
bluestore fsck on mkfs = false
debug rocksdb = 1/5

[client.rgw.a]
rgw data = $c/rgw
rgw frontends = beast endpoint=127.0.0.1:${_SK[FM_RGW_PORT]}
# No request lines in the log: at level 1 RGW writes each request with its query string (beast's access line:
# whole presigned URLs, signatures included) and the events webhook URL with its secret. Errors (level 0) stay.
# The in-memory level (after the /) is 0 too, or a crash dump would write the recent request lines after all.
debug rgw = ${FM_RGW_DEBUG:-0/0}
# No ops log, usage log or logged HTTP headers (each would keep the same request details).
rgw enable ops log = false
rgw enable usage log = false
rgw log http headers =
# re-check the OSD map every second (not 5): a radosgw started beside its OSD is ready sooner
objecter tick interval = 1
EOF
  mv -f "$c/ceph.conf.tmp" "$c/ceph.conf"
}

stack_start_ceph() {
  _stack_use "${1:-}" || return 1
  local t0 c="$_SD/ceph" l="$_SD/logs" conf="$_SD/ceph/ceph.conf" fresh=0 osd_uuid
  t0="$(_stack_now)"
  if _stack_pid ceph-mon > /dev/null && _stack_pid ceph-osd > /dev/null && _stack_pid radosgw > /dev/null; then
    return 0
  fi
  if [ ! -e "$c/created" ]; then
    # A cluster that never finished being made is made again from scratch.
    _stack_kill radosgw 10; _stack_kill ceph-osd 10; _stack_kill ceph-mon 10
    rm -rf "$c"
    fresh=1
  fi
  _stack_pid ceph-mon > /dev/null || _stack_check_port "${_SK[FM_CEPH_MON_PORT]}" "ceph-mon" || return 1
  _stack_pid radosgw > /dev/null || _stack_check_port "${_SK[FM_RGW_PORT]}" "radosgw (S3)" || return 1
  mkdir -p "$c/run" "$c/crash" "$c/rgw" || return 1
  [ -s "$c/fsid" ] || uuidgen > "$c/fsid" || return 1
  _stack_ceph_conf || return 1
  if [ "$fresh" = 1 ]; then
    local fsid; read -r fsid < "$c/fsid"
    monmaptool --create --clobber --addv a "[v2:127.0.0.1:${_SK[FM_CEPH_MON_PORT]}]" --fsid "$fsid" "$c/monmap" \
      >> "$l/ceph-setup.log" 2>&1 &&
    ceph-mon -c "$conf" --mkfs -i a --monmap "$c/monmap" >> "$l/ceph-setup.log" 2>&1 ||
      { _stack_err "ceph-mon --mkfs failed"; _stack_tail "$l/ceph-setup.log"; return 1; }
  fi
  _stack_pid ceph-mon > /dev/null || _stack_spawn ceph-mon "$l/ceph-mon.out" ceph-mon -c "$conf" -i a -f
  if [ "$fresh" = 1 ]; then
    # radosgw can start now: it waits for the OSD by itself, and creating its pools overlaps the OSD's mkfs.
    _stack_spawn radosgw "$l/radosgw.out" radosgw -c "$conf" -n client.rgw.a -f
    osd_uuid="$(uuidgen)" && printf '%s\n' "$osd_uuid" > "$c/osd-uuid" || return 1
    local id
    id="$(_stack_ceph osd new "$osd_uuid" 2>> "$l/ceph-setup.log")" ||
      { _stack_err "ceph osd new failed"; _stack_tail "$l/ceph-setup.log"; _stack_tail "$l/ceph-mon.a.log"; return 1; }
    [ "$id" = 0 ] || { _stack_err "unexpected osd id '$id'"; return 1; }
    mkdir -p "$c/osd-0" &&
    ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$osd_uuid" >> "$l/ceph-setup.log" 2>&1 ||
      { _stack_err "ceph-osd --mkfs failed"; _stack_tail "$l/ceph-setup.log"; return 1; }
  fi
  _stack_pid ceph-osd > /dev/null || _stack_spawn ceph-osd "$l/ceph-osd.out" ceph-osd -c "$conf" -i 0 -f
  _stack_pid radosgw > /dev/null || _stack_spawn radosgw "$l/radosgw.out" radosgw -c "$conf" -n client.rgw.a -f
  _stack_wait "Ceph RGW" 180 "$l/ceph-client.rgw.a.log" radosgw _stack_rgw_ready || return 1
  if [ ! -e "$c/created" ]; then
    if ! radosgw-admin -c "$conf" user info --uid="$STACK_RGW_UID" > /dev/null 2>&1; then
      radosgw-admin -c "$conf" user create --uid="$STACK_RGW_UID" --display-name="Files Manager" \
        --access-key="${_SK[FM_S3_ACCESS_KEY]}" --secret="${_SK[FM_S3_SECRET_KEY]}" >> "$l/ceph-setup.log" 2>&1 ||
        { _stack_err "radosgw-admin user create failed"; _stack_tail "$l/ceph-setup.log"; return 1; }
    fi
    date -u +%FT%TZ > "$c/created"
  fi
  _stack_msg "Ceph RGW (S3) ready on 127.0.0.1:${_SK[FM_RGW_PORT]} ($([ "$fresh" = 1 ] && echo "new cluster, ")$(_stack_since "$t0"))"
}

stack_stop_ceph() {
  _stack_use "${1:-}" || return 1
  local rc=0
  _stack_kill radosgw 30 || rc=1
  _stack_kill ceph-osd 60 || rc=1
  _stack_kill ceph-mon 30 || rc=1
  return $rc
}

# --- everything --------------------------------------------------------------------------------------------

_stack_services=(pg redis ceph clamd)

stack_start() {
  local -
  set +m  # no job-control chatter when sourced into an interactive shell
  _stack_use "${1:-}" || return 1  # settings and keys are written once, before the parallel starts
  local d="$_SD" t0 s rc=0
  t0="$(_stack_now)"
  declare -A pids=()
  for s in "${_stack_services[@]}"; do
    ( "stack_start_$s" "$d" ) &
    pids[$s]=$!
  done
  for s in "${_stack_services[@]}"; do
    wait "${pids[$s]}" || { rc=1; _stack_msg "$s failed to start (logs in $d/logs)"; }
  done
  [ "$rc" = 0 ] && _stack_msg "all services ready in $d ($(_stack_since "$t0"))"
  return $rc
}

stack_stop() {
  local -
  set +m  # no job-control chatter when sourced into an interactive shell
  local want="${1:-${FM_STACK_DIR:-$STACK_REPO_ROOT/.local}}"
  [ -f "$want/stack.env" ] || { _stack_msg "nothing to stop in $want"; return 0; }
  _stack_use "$want" || return 1
  local d="$_SD" t0 s rc=0
  t0="$(_stack_now)"
  declare -A pids=()
  for s in "${_stack_services[@]}"; do
    ( "stack_stop_$s" "$d" ) &
    pids[$s]=$!
  done
  for s in "${_stack_services[@]}"; do
    wait "${pids[$s]}" || rc=1
  done
  _stack_msg "stopped in $d ($(_stack_since "$t0"))"
  return $rc
}

# stack_rotate_logs DATA: every log in DATA/logs larger than FM_LOG_ROTATE_BYTES is copied to .1 (older copies
# shift to .2 … FM_LOG_ROTATE_KEEP, the last one dropped) and truncated in place. Copy-and-truncate, not rename: every
# writer (the daemons, our services' stderr) appends with O_APPEND to a descriptor it keeps, so nobody has to reopen
# anything and no signal is sent; lines written between the copy and the truncation are lost (a few at most). The
# copies are 0600 like the logs. Run by infra/up's rotator (services_rotator_start, every 30 s).
stack_rotate_logs() {
  _stack_use "${1:-}" || return 1
  local max="${FM_LOG_ROTATE_BYTES:-67108864}" keep="${FM_LOG_ROTATE_KEEP:-2}" f size i
  [[ $max =~ ^[0-9]+$ && $keep =~ ^[0-9]+$ ]] || { _stack_err "FM_LOG_ROTATE_BYTES and _KEEP are numbers"; return 1; }
  [ "$max" -gt 0 ] || return 0
  [ "$keep" -ge 1 ] || keep=1
  for f in "$_SD"/logs/*.log "$_SD"/logs/*.out; do
    [ -f "$f" ] && [ ! -L "$f" ] || continue
    size="$(stat -c %s "$f" 2> /dev/null)" || continue
    [ "$size" -gt "$max" ] || continue
    for (( i = keep; i > 1; i-- )); do
      [ ! -f "$f.$(( i - 1 ))" ] || mv -f "$f.$(( i - 1 ))" "$f.$i"
    done
    (umask 077 && cp "$f" "$f.1.tmp" && mv -f "$f.1.tmp" "$f.1") && : > "$f" ||
      _stack_err "cannot rotate $f"
  done
  return 0
}

stack_status() {
  _stack_use "${1:-}" || return 1
  local rc=0 name pid port ok
  for name in pg redis ceph-mon ceph-osd radosgw clamd; do
    case "$name" in
      pg) port="${_SK[FM_PG_PORT]}"; ok=_stack_pg_ready ;;
      redis) port="${_SK[FM_REDIS_PORT]}"; ok=_stack_redis_ready ;;
      ceph-mon) port="${_SK[FM_CEPH_MON_PORT]}"; ok=true ;;
      ceph-osd) port="${_SK[FM_CEPH_PORT_MIN]}-${_SK[FM_CEPH_PORT_MAX]}"; ok=true ;;
      radosgw) port="${_SK[FM_RGW_PORT]}"; ok=_stack_rgw_ready ;;
      clamd) port="${_SK[FM_CLAMD_PORT]}"; ok=_stack_clamd_ready ;;
    esac
    if pid="$(_stack_pid "$name")"; then
      if "$ok" > /dev/null 2>&1; then
        printf '%-9s running   pid %-8s 127.0.0.1:%s\n' "$name" "$pid" "$port"
      else
        printf '%-9s running   pid %-8s 127.0.0.1:%s  NOT ANSWERING\n' "$name" "$pid" "$port"; rc=1
      fi
    else
      printf '%-9s stopped\n' "$name"; rc=1
    fi
  done
  return $rc
}

stack_env() {
  _stack_use "${1:-}" || return 1
  local k v
  while IFS='=' read -r k v; do
    printf "export %s='%s'\n" "$k" "${v//\'/\'\\\'\'}"
  done <<EOF
FM_STACK_DIR=$_SD
FM_DATABASE_URL=host=127.0.0.1 port=${_SK[FM_PG_PORT]} dbname=$STACK_DB_NAME user=postgres
FM_REDIS_URL=redis://127.0.0.1:${_SK[FM_REDIS_PORT]}/0
FM_S3_ENDPOINT=http://127.0.0.1:${_SK[FM_RGW_PORT]}
FM_S3_REGION=us-east-1
FM_S3_BUCKET=${_SK[FM_S3_BUCKET]}
FM_S3_ACCESS_KEY=${_SK[FM_S3_ACCESS_KEY]}
FM_S3_SECRET_KEY=${_SK[FM_S3_SECRET_KEY]}
FM_CLAMD_ADDR=127.0.0.1:${_SK[FM_CLAMD_PORT]}
EOF
}

# stack_s3_prepare DATA [options of infra/lib/s3_prepare.py]: bucket, CORS, topic and notification.
# Reads FM_WEB_ORIGIN, FM_S3_EVENTS_URL, FM_S3_EVENTS_PERSISTENT, FM_S3_TOPIC from the caller's environment.
stack_s3_prepare() {
  local env
  env="$(stack_env "${1:-}")" || return 1
  shift || true
  ( eval "$env" && "$STACK_PYTHON" "$STACK_REPO_ROOT/infra/lib/s3_prepare.py" "$@" )
}
