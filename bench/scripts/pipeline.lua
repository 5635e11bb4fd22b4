-- HTTP/1.1 pipelining for wrk, after wrk's own scripts/pipeline.lua: every write carries
-- DEPTH requests for "/" (first script argument after "--", default 16), and wrk waits for
-- all DEPTH responses before writing the next batch. wrk counts each response as a request.
-- Used by `dap-bench http` (scenario p16): wrk -t1 -c64 -s pipeline.lua URL -- 16

init = function(args)
   local depth = tonumber(args[1]) or 16
   local r = {}
   for i = 1, depth do
      r[i] = wrk.format("GET", "/")
   end
   req = table.concat(r)
end

request = function()
   return req
end
