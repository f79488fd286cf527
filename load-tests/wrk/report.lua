-- wrk script: print a one-line summary for scripts to parse, beside wrk's own text.
--   wrk -t1 -c50 -d10s --latency -s load-tests/wrk/report.lua http://127.0.0.1:8080/
done = function(summary, latency, requests)
  io.write(string.format(
    "REPORT requests=%d rps=%.1f p50_us=%d p99_us=%d errors=%d non2xx=%d\n",
    summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end
