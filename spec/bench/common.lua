-- What the benchmark's scripts share (spec/bench/bench.lua, pg.lua, worker.lua): files, shell
-- quoting, medians, report padding, failing loudly on a failed store call, and the mutators
-- the timed operations use. Found through LUA_PATH (spec/bench/run.sh).
local fmt = string.format

local common = {}

function common.sh_quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

function common.median(t)
  local c = {}
  for i = 1, #t do c[i] = t[i] end
  table.sort(c)
  local n = #c
  if n == 0 then return 0 / 0 end
  if n % 2 == 1 then return c[(n + 1) // 2] end
  return (c[n // 2] + c[n // 2 + 1]) / 2
end

--- The file's bytes, or nil, message (io.open's) when it cannot be opened.
function common.read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s = f:read("a")
  f:close()
  return s
end

function common.write_file(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

function common.exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

-- Fail loudly on any failed store call: the figures of a failing operation mean nothing.
function common.must(v, msg, code)
  if v == nil then error(fmt("store call failed: %s (%s)", tostring(msg), tostring(code)), 2) end
  return v
end

-- Padding by characters (the report has µ and ×).
function common.pad(s, w)
  local n = utf8.len(s) or #s
  return n < w and s .. string.rep(" ", w - n) or s
end

function common.lpad(s, w)
  local n = utf8.len(s) or #s
  return n < w and string.rep(" ", w - n) .. s or s
end

-- Mutators. bump: a size-neutral edit (operatorContext.accountId counts up with the same
-- length); reset_status: back to awaiting_scan (after a timed consume); delete: remove it.
function common.bump(s)
  local c = s.operatorContext
  c.accountId = fmt("acct-%07d", (tonumber(c.accountId:sub(6)) + 1) % 10000000)
end

function common.reset_status(s) s.status = "awaiting_scan" end

function common.delete() return false end

return common
