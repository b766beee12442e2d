-- wrk script of tests/bench/bench_control.py (every wrk row uses it; configured by environment, never by argv).
--   FM_BENCH_TOKEN   adds `Authorization: Bearer <token>` (kept off the command line).
--   FM_BENCH_BODY    makes the request a POST with this body and `Content-Type: application/json`.
--   FM_BENCH_RANDOM_SHA256=1
--                    each request gets its own body: the "@SHA256@" in FM_BENCH_BODY is replaced by 64 fresh random
--                    hex digits (math.random, seeded per wrk thread from FM_BENCH_SEED), so that every
--                    `POST /v1/uploads` claims a new hash and takes the presign path, never the dedupe one.
-- At the end it prints one machine-readable line: FM_BENCH_JSON {...} with the request count, every error class and
-- exact latency percentiles in microseconds (wrk's own --latency table rounds them).
local token = os.getenv("FM_BENCH_TOKEN")
if token ~= nil and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

local body = os.getenv("FM_BENCH_BODY")
if body ~= nil and body ~= "" then
  wrk.method = "POST"
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end

if os.getenv("FM_BENCH_RANDOM_SHA256") == "1" then
  local threads = 0
  function setup(thread)
    threads = threads + 1
    thread:set("fm_thread_no", threads)
  end

  function init(args)
    local seed = tonumber(os.getenv("FM_BENCH_SEED") or "") or os.time()
    -- fm_thread_no is set by setup() in this thread's Lua state.
    math.randomseed(seed + 7919 * (fm_thread_no or 0))
    for _ = 1, 10 do math.random() end
  end

  local hex, fmt, rand, concat = {}, string.format, math.random, table.concat
  local prefix, suffix = body:match("^(.-)@SHA256@(.*)$")
  if prefix == nil then
    error("FM_BENCH_RANDOM_SHA256=1 needs @SHA256@ in FM_BENCH_BODY")
  end

  function request()
    for i = 1, 16 do
      hex[i] = fmt("%04x", rand(0, 65535))
    end
    return wrk.format(nil, nil, nil, prefix .. concat(hex) .. suffix)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'FM_BENCH_JSON {"duration_us":%d,"requests":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.mean, latency.max))
end
