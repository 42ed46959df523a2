-- wrk script for `bench/run.sh soak`: rotates request kinds and tallies the
-- answers by class. Expected: a valid token gets 200 (Cloudflare credentials,
-- or Synapse's `{}` fallback while the fake Cloudflare fails); an invalid
-- token gets 401. Anything else is unexpected.
--
-- wrk gives response() no link to the request it answers, so answers are
-- classified by status, and done() cross-checks the tallies against what was
-- sent: each class may trail its sent count only by the requests still in
-- flight when wrk stopped (at most one per connection).

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   local valid = { ["Authorization"] = "Bearer syt_bench_token" }
   local invalid = { ["Authorization"] = "Bearer syt_not_a_valid_token" }
   kinds = {
      { valid = true,  req = wrk.format("GET", "/_matrix/client/v3/voip/turnServer", valid) },
      { valid = false, req = wrk.format("GET", "/_matrix/client/v3/voip/turnServer", invalid) },
      { valid = true,  req = wrk.format("GET", "/_matrix/client/r0/voip/turnServer", valid) },
   }
   n = 0
   sent_valid, sent_invalid = 0, 0
   ok_credentials, ok_fallback, unauthorized = 0, 0, 0
   status_5xx, status_other = 0, 0
end

function request()
   n = n + 1
   local k = kinds[(n - 1) % #kinds + 1]
   if k.valid then sent_valid = sent_valid + 1 else sent_invalid = sent_invalid + 1 end
   return k.req
end

function response(status, headers, body)
   if status == 200 then
      if body and string.find(body, '"uris"', 1, true) then
         ok_credentials = ok_credentials + 1
      else
         ok_fallback = ok_fallback + 1
      end
   elseif status == 401 then
      unauthorized = unauthorized + 1
   elseif status >= 500 then
      status_5xx = status_5xx + 1
   else
      status_other = status_other + 1
   end
end

function done(summary, latency, requests)
   local t = { sent_valid = 0, sent_invalid = 0, ok_credentials = 0, ok_fallback = 0,
               unauthorized = 0, status_5xx = 0, status_other = 0 }
   for _, thread in ipairs(threads) do
      for name, _ in pairs(t) do
         t[name] = t[name] + (thread:get(name) or 0)
      end
   end
   local e = summary.errors
   local socket = e.connect + e.read + e.write + e.timeout
   local ok200 = t.ok_credentials + t.ok_fallback
   -- More answers of a class than requests of the matching kind means some
   -- request got the wrong class of answer.
   local misattributed = math.max(0, ok200 - t.sent_valid) + math.max(0, t.unauthorized - t.sent_invalid)
   local unexpected = t.status_5xx + t.status_other + socket + misattributed
   io.write(string.format(
      "SOAK requests=%d duration_us=%d p50_us=%d p99_us=%d sent_valid=%d sent_invalid=%d " ..
      "ok_credentials=%d ok_fallback=%d unauthorized=%d status_5xx=%d status_other=%d " ..
      "connect=%d read=%d write=%d timeout=%d misattributed=%d unexpected=%d\n",
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
      t.sent_valid, t.sent_invalid, t.ok_credentials, t.ok_fallback, t.unauthorized,
      t.status_5xx, t.status_other, e.connect, e.read, e.write, e.timeout,
      misattributed, unexpected))
end
