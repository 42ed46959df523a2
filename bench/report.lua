-- wrk reporter for bench/run.sh: prints one machine-readable line after a run.
-- Defines only done(), so wrk keeps its fast path (no per-request Lua calls).
function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d non2xx3xx=%d " ..
      "connect=%d read=%d write=%d timeout=%d\n",
      summary.requests, summary.duration,
      latency:percentile(50), latency:percentile(99),
      e.status, e.connect, e.read, e.write, e.timeout))
end
