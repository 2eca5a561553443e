--- spec/ha/peers.lua: what the other clients of a failover run logged (WORK/logs/1 to 64, all
-- but the caller's own), read as it grows. spec/ha/client.lua and
-- spec/nginx/failover_client.lua pick the sessions they act on from it.
--
--   local new_lines = require("peers")(work, id)
--   new_lines(function(line) ... end)   -- each whole line appended since the last call
return function(work, id)
  local read_at = {}
  return function(each)
    for i = 1, 64 do
      local name = tostring(i)
      if name ~= id then
        local f = io.open(work .. "/logs/" .. name, "rb")
        if not f then break end
        f:seek("set", read_at[name] or 0)
        local data = f:read("a")
        f:close()
        local cut = data:match("^.*\n()") or 1 -- (whole lines only: a line being written waits)
        read_at[name] = (read_at[name] or 0) + cut - 1
        for line in data:sub(1, cut - 1):gmatch("[^\n]+") do each(line) end
      end
    end
  end
end
