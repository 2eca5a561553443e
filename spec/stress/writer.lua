-- Crash-atomicity writer: rewrites a ~1 MB sessions file in a loop until killed. Each version n
-- has secondaryCodeAttempts = n and a 1 MiB bigField made only of the letter ('a' + n % 26).
--   lua5.4 spec/stress/writer.lua PATH SID pairstore   through store:update (atomic)
--   lua5.4 spec/stress/writer.lua PATH SID inplace     negative control: open(path, "w") and
--                                                      write in 64 KiB chunks (not atomic)
--   lua5.4 spec/stress/writer.lua PATH SID prepare     write one version and exit
local path, sid, how = arg[1], arg[2], arg[3]
local MB = 1024 * 1024

local function version(s)
  local n = s.secondaryCodeAttempts + 1
  s.secondaryCodeAttempts = n
  s.bigField = string.rep(string.char(97 + n % 26), MB)
end

if how == "prepare" then -- one pairstore version, to start from a complete ~1 MB file
  local store = require("pairstore").open(path, { max_session_bytes = 4 * MB })
  assert(store:update(sid, version))
elseif how == "pairstore" then
  local store = require("pairstore").open(path, { durable = os.getenv("PS_DURABLE") ~= "0", max_session_bytes = 4 * MB })
  while true do
    local r, msg = store:update(sid, version)
    if not r then io.stderr:write(msg, "\n") os.exit(1) end
  end
elseif how == "inplace" then
  local json = require("cjson").new()
  while true do
    local f = assert(io.open(path, "rb"))
    local doc = json.decode(f:read("a"))
    f:close()
    version(doc.sessions[1])
    local text = json.encode(doc)
    f = assert(io.open(path, "wb"))
    for i = 1, #text, 65536 do
      f:write(text:sub(i, i + 65535))
      f:flush()
    end
    f:close()
  end
end
