-- wrk script: client_credentials grants at /oauth/token (HTTP Basic); prints
-- one JSON summary line for bench/report.py. Run from the repository root.
wrk.method = "POST"
wrk.body = "grant_type=client_credentials"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic " .. (os.getenv("BENCH_BASIC") or "")

dofile("bench/summary.lua")
