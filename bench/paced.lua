-- wrk script (paced: each connection waits 10 ms between requests, so the
-- proxies run well below saturation and latency is service time, not
-- queueing): the same request and summary as bench/mcp.lua.
dofile("bench/mcp.lua")

function delay()
  return 10
end
