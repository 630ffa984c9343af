-- wrk script for bench/ingest.py: send every pre-signed request exactly once, then stop.
--
-- Usage (bench/ingest.py runs it):
--   wrk -t T -c C -s ingest_wrk.lua URL -- DIR T C [statuses]
--
-- Thread i reads DIR/requests.<i>.bin (records of "<length>\n<raw HTTP request>") and hands
-- them out, each once, to whichever of its connections is ready. A connection with nothing
-- left to send gets an empty request: wrk writes zero bytes and the connection just waits.
--
-- Knowing when every response is in: wrk calls request() once when a connection opens and
-- once after each response on it, so with C/T connections per thread the thread has all its
-- responses at call number total + C/T. That keeps Lua out of the response path (a response()
-- hook makes wrk build a Lua table of every response's headers, which costs more CPU than
-- the rest of wrk). wrk itself counts answers with a status >= 400 (summary.errors.status).
-- With the 5th argument "statuses", a response() hook counts 2xx answers one by one and keeps
-- a sample of the others' bodies, for diagnosis.
--
-- When a thread has all its responses it writes DIR/done.<i> and stops; the thread that
-- completes the set sends SIGINT to wrk so that it ends now instead of at -d, which stays the
-- hard bound. Timing for the throughput comes from CLOCK_MONOTONIC here, not from wrk's own
-- runtime (which includes the idle tail); latency is wrk's per-request histogram (from
-- writing a request to reading its whole response).
--
-- wrk calls request() once in thread 0 before the run to check the request's format and
-- throws the result away; that call is answered with the first request without using it up.

local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
int kill(int pid, int sig);
int getpid(void);
]])
local CLOCK_MONOTONIC = 1
local SIGINT = 2
local timespec = ffi.new("bench_timespec")

local function now_us()
   ffi.C.clock_gettime(CLOCK_MONOTONIC, timespec)
   return tonumber(timespec.tv_sec) * 1000000 + math.floor(tonumber(timespec.tv_nsec) / 1000)
end

-- main state: number the threads and keep them for done()
local threads = {}

function setup(thread)
   thread:set("id", #threads)
   table.insert(threads, thread)
end

-- thread state; the counters are globals so that done() can read them with thread:get()
local requests = {}
total, sent, received, ok, bad = 0, 0, 0, -1, -1
local calls, per_thread_connections, statuses = 0, 0, false
first_us, last_us = 0, 0
bad_sample = ""
local dir, nthreads
local checked = false
local finished = false

function init(args)
   dir, nthreads = args[1], tonumber(args[2])
   per_thread_connections = tonumber(args[3]) / nthreads
   statuses = args[4] == "statuses"
   if statuses then
      ok, bad = 0, 0
      response = count_response
   end
   local f = assert(io.open(dir .. "/requests." .. id .. ".bin", "rb"))
   while true do
      local line = f:read("*l")
      if not line then
         break
      end
      local n = assert(tonumber(line), "bad record header")
      local req = f:read(n)
      assert(req and #req == n, "truncated record")
      requests[#requests + 1] = req
   end
   f:close()
   total = #requests
   checked = id ~= 0
end

local function all_done()
   for i = 0, nthreads - 1 do
      local f = io.open(dir .. "/done." .. i, "r")
      if not f then
         return false
      end
      f:close()
   end
   return true
end

local function finish()
   finished = true
   local f = assert(io.open(dir .. "/done." .. id, "w"))
   f:write("done\n")
   f:close()
   wrk.thread:stop()
   if all_done() then
      ffi.C.kill(ffi.C.getpid(), SIGINT)
   end
end

function request()
   if not checked then
      checked = true
      return requests[1]
   end
   if not statuses then
      calls = calls + 1
      received = calls - per_thread_connections
      if received >= total and not finished then
         last_us = now_us()
         finish()
      end
   end
   if sent >= total then
      return ""
   end
   sent = sent + 1
   if sent == 1 then
      first_us = now_us()
   end
   local req = requests[sent]
   requests[sent] = nil
   return req
end

function count_response(status, headers, body)
   received = received + 1
   if status >= 200 and status < 300 then
      ok = ok + 1
   else
      bad = bad + 1
      if #bad_sample < 600 then
         bad_sample = bad_sample .. status .. " " .. string.sub(body or "", 1, 300) .. "\n"
      end
   end
   if received >= total and not finished then
      last_us = now_us()
      finish()
   end
end

local function json_string(s)
   return '"' .. s:gsub('[%c"\\]', function(c)
      return string.format("\\u%04x", string.byte(c))
   end) .. '"'
end

function done(summary, latency, _)
   local parts = {}
   for _, t in ipairs(threads) do
      parts[#parts + 1] = string.format(
         '{"id":%d,"total":%d,"sent":%d,"received":%d,"ok":%d,"bad":%d,'
            .. '"first_us":%d,"last_us":%d,"bad_sample":%s}',
         t:get("id"), t:get("total"), t:get("sent"), t:get("received"), t:get("ok"),
         t:get("bad"), t:get("first_us"), t:get("last_us"), json_string(t:get("bad_sample"))
      )
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"threads":[%s],"requests":%d,"duration_us":%d,'
         .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
         .. '"latency_us":{"min":%d,"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d}}\n',
      table.concat(parts, ","), summary.requests, summary.duration,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.mean, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9), latency.max
   ))
end
