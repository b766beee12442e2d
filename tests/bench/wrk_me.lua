-- wrk script of tests/bench/bench_control.py.
-- Adds `Authorization: Bearer $FM_BENCH_TOKEN` when that variable is set (kept off the command line), and prints one
-- machine-readable line at the end: FM_BENCH_JSON {...} with the request count, every error class and exact
-- latency percentiles in microseconds (wrk's own --latency table rounds them).
local token = os.getenv("FM_BENCH_TOKEN")
if token ~= nil and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
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
