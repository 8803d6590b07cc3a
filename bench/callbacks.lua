-- wrk script: replay a corpus of requests (callbacks, or API reads), optionally paced.
--
--   wrk -t2 -c8 -d10s -s bench/callbacks.lua URL -- CORPUS OFFSET THREADS RATE AUTH
--
-- CORPUS: one request per line, "METHOD<TAB>PATH<TAB>BODY" (BODY empty for GET). Thread i of
--   THREADS replays lines i, i+THREADS, ... starting at line OFFSET, so no two threads send
--   the same event and a later run can continue where the previous one stopped.
-- RATE: requests/s over all threads (0: as fast as possible, and no delay() at all). Each
--   thread keeps a schedule of THREADS/RATE s per request, so a slow answer is caught up on
--   instead of lowering the rate.
-- AUTH: the Authorization header value ("" for none).
-- done() prints one line "BENCH_JSON {...}": requests sent (written), answered, 2xx, non-2xx,
-- the span from the first request to the last answer, wrk's errors and latency percentiles
-- (us). wrk abandons the requests in flight when -d ends: sent - answered of them.

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local requests, count, index = {}, 0, 0
local rate, interval, due, verify_call = 0, 0, nil, false
sent, answered, ok, non2xx, t_first, t_last = 0, 0, 0, 0, 0, 0

function init(args)
  local corpus, offset, nthreads = args[1], tonumber(args[2]), tonumber(args[3])
  rate = tonumber(args[4])
  local auth = args[5] or ""
  if rate > 0 then
    interval = nthreads / rate
  else
    delay = nil -- unpaced: wrk then writes each request as soon as the connection is up
  end
  -- wrk calls request() once on thread 0 to check the script before the run: not a send.
  verify_call = (id == 0)
  local lines = {}
  for line in io.lines(corpus) do lines[#lines + 1] = line end
  local n = #lines
  for k = 0, n - 1 do
    local pos = (offset + k) % n
    if pos % nthreads == id then
      local method, path, body = lines[pos + 1]:match("^(%u+)\t([^\t]*)\t?(.*)$")
      local headers = { ["User-Agent"] = "BandwidthAPI/v1 (bench)" }
      if auth ~= "" then headers["Authorization"] = auth end
      if body == "" then
        body = nil
      else
        headers["Content-Type"] = "application/json; charset=utf-8"
      end
      count = count + 1
      requests[count] = wrk.format(method, path, headers, body)
    end
  end
end

function delay()
  local t = now()
  if due == nil then due = t end
  due = due + interval
  local wait = (due - t) * 1000
  if wait <= 0 then return 0 end
  return math.floor(wait + 0.5)
end

function request()
  if verify_call then
    verify_call = false
  else
    sent = sent + 1
    if t_first == 0 then t_first = now() end
  end
  index = index % count + 1
  return requests[index]
end

function response(status, headers, body)
  answered = answered + 1
  if status >= 200 and status < 300 then ok = ok + 1 else non2xx = non2xx + 1 end
  t_last = now()
end

function done(summary, latency, _)
  local total = { sent = 0, answered = 0, ok = 0, non2xx = 0 }
  local first, last = math.huge, 0
  for _, thread in ipairs(threads) do
    for key, _ in pairs(total) do total[key] = total[key] + thread:get(key) end
    local f, l = thread:get("t_first"), thread:get("t_last")
    if f > 0 and f < first then first = f end
    if l > last then last = l end
  end
  local span = (first < math.huge and last > first) and (last - first) or 0
  local e = summary.errors
  local parts = {
    string.format('"sent":%d,"answered":%d,"ok":%d,"non2xx":%d', total.sent, total.answered,
      total.ok, total.non2xx),
    string.format('"span_s":%.6f,"wrk_requests":%d', span, summary.requests),
    string.format('"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}',
      e.connect, e.read, e.write, e.status, e.timeout),
    string.format('"latency_us":{"p50":%d,"p90":%d,"p95":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}',
      latency:percentile(50), latency:percentile(90), latency:percentile(95),
      latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean),
  }
  io.write("BENCH_JSON {" .. table.concat(parts, ",") .. "}\n")
end
