-- wrk script of tests/bench/bench_control.py (every wrk row uses it; configured by environment, never by argv).
--   FM_BENCH_TOKEN   adds `Authorization: Bearer <token>` (kept off the command line).
--   FM_BENCH_BODY    makes the request a POST with this body and `Content-Type: application/json`.
--   FM_BENCH_RANDOM_SHA256=1
--                    each request gets its own body: the "@SHA256@" in FM_BENCH_BODY is replaced by 64 fresh random
--                    hex digits (math.random, seeded per wrk thread from FM_BENCH_SEED), so that every
--                    `POST /v1/uploads` claims a new hash and takes the presign path, never the dedupe one.
--   "@NAME@" in FM_BENCH_BODY (either mode) is replaced by 16 fresh random hex digits per request, so that every
--                    upload has a name of its own: names are unique among siblings (on_conflict, docs/uploads.md),
--                    and a load of one name would measure the numbering of copies, not the presign.
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

local has_name = body ~= nil and body:find("@NAME@", 1, true) ~= nil
local random_sha = os.getenv("FM_BENCH_RANDOM_SHA256") == "1"
if random_sha or has_name then
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

  local hex, name_hex, fmt, rand, concat = {}, {}, string.format, math.random, table.concat
  local prefix, suffix = body:match("^(.-)@SHA256@(.*)$")
  if random_sha and prefix == nil then
    error("FM_BENCH_RANDOM_SHA256=1 needs @SHA256@ in FM_BENCH_BODY")
  end

  function request()
    local b = body
    if random_sha then
      for i = 1, 16 do
        hex[i] = fmt("%04x", rand(0, 65535))
      end
      b = prefix .. concat(hex) .. suffix
    end
    if has_name then
      for i = 1, 4 do
        name_hex[i] = fmt("%04x", rand(0, 65535))
      end
      b = b:gsub("@NAME@", concat(name_hex), 1)
    end
    return wrk.format(nil, nil, nil, b)
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
