-- wrk script: POST one chat completion per request and print the results as one JSON line.
-- BENCH_BODY is the JSON request; BENCH_TOKEN a bearer token; with BENCH_USER set, each wrk
-- thread (the bench runs one connection per thread) is one client with a stable `user`.
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("client", counter)
end

function init(args)
  local body = os.getenv("BENCH_BODY")
  local user = os.getenv("BENCH_USER")
  if user and user ~= "" then
    body = string.gsub(body, "}$", string.format(',"user":"%s-%d"}', user, client))
  end
  local headers = { ["Content-Type"] = "application/json" }
  local token = os.getenv("BENCH_TOKEN")
  if token and token ~= "" then
    headers["Authorization"] = "Bearer " .. token
  end
  req = wrk.format("POST", nil, headers, body)
end

function request()
  return req
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"socket_errors":%d,"status_errors":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
