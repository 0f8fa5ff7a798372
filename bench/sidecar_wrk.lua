-- wrk 4.1 script for bench/bench_sidecar.py (Debian's wrk embeds LuaJIT, hence `ffi`).
--
-- wrk is closed-loop: a connection sends its next request as soon as the previous answer has
-- arrived. With WRK_RATE set (requests per second for this thread; the benchmark runs `-t1`),
-- delay() holds every request back until its slot on a shared schedule, one slot every
-- 1000 / WRK_RATE ms. Unlike a fixed pause per connection, whose rate drops by the latency
-- (connections × 1000 / (gap + latency)), the schedule keeps the offered rate at the target
-- as long as one connection is free at each slot; behind schedule, delay() returns 0 and the
-- free connections catch up. Latency still counts from the moment the request is written, not
-- from its slot: a stall that holds every connection hides the requests it delayed
-- (coordinated omission, which wrk2 corrects and wrk 4.1 cannot).
--
-- done() prints one JSON line (latencies in microseconds) for the benchmark to parse.

local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]])
local CLOCK_MONOTONIC = 1
local clock = ffi.new("bench_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, clock)
  return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
end

local rate = tonumber(os.getenv("WRK_RATE") or "")

-- Defined only for a fixed rate: wrk skips the delay machinery when the script has no delay().
if rate and rate > 0 then
  local interval_ms = 1000 / rate
  local next_slot = nil

  function delay()
    local now = now_ms()
    if next_slot == nil then
      next_slot = now
    end
    local wait = next_slot - now
    next_slot = next_slot + interval_ms
    if wait < 0 then
      return 0
    end
    -- wrk truncates the answer to whole milliseconds; rounding keeps the mean on the slot.
    return math.floor(wait + 0.5)
  end
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, '
      .. '"write_errors": %d, "status_errors": %d, "timeouts": %d, "p50_us": %d, '
      .. '"p90_us": %d, "p99_us": %d, "p999_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, errors.connect, errors.read, errors.write,
    errors.status, errors.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean
  ))
end
