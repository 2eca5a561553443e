--- pairstore.compat: the one place where pairstore's Lua code meets the differences between
-- Lua 5.4, 5.3, 5.1 and LuaJIT 2.1. Everything else is written in the subset the four share.
--
-- Numbers: 5.3 and 5.4 have an integer subtype; on 5.1 and LuaJIT every number is a double.
-- There, an "integer" is a number with an integral value in [-2^63, 2^63) (what 5.4 converts
-- to an integer); integers up to 2^53 are exact.
local M = {}

local type, floor, select = type, math.floor, select
local char, byte = string.char, string.byte

--- "lua5.4", "lua5.3", "lua5.1" or "luajit": the name of the interpreter's Debian binary.
M.runtime = rawget(_G, "jit") and "luajit" or "lua" .. _VERSION:match("%d+%.%d+")

--- Whether numbers have an integer subtype (5.3 and later).
M.has_integers = math.type ~= nil

M.unpack = rawget(table, "unpack") or rawget(_G, "unpack")

--- table.pack(...)
function M.pack(...) return { n = select("#", ...), ... } end

--- The largest and smallest integers (5.1: the doubles nearest to +-2^63 that a 64-bit
-- integer holds).
M.maxinteger = math.maxinteger or 2 ^ 63 - 1024
M.mininteger = math.mininteger or -2 ^ 63

--- The integer value of the number v, or nil (a non-number, a fraction, out of range).
--- is_integer(v): v is an integer (5.3+: math.type(v) == "integer"; else an integral number).
if M.has_integers then
  local mtype, mtoint = math.type, math.tointeger
  function M.tointeger(v)
    if type(v) == "number" then return mtoint(v) end
    return nil
  end
  function M.is_integer(v) return mtype(v) == "integer" end
else
  local TWO63 = 2 ^ 63
  function M.tointeger(v)
    if type(v) == "number" and v == floor(v) and v >= -TWO63 and v < TWO63 then return v end
    return nil
  end
  function M.is_integer(v) return M.tointeger(v) ~= nil end
end

--- floor(a / b) for integers a, b (b > 0), exact below 2^53.
function M.idiv(a, b) return floor(a / b) end

--- a & b for non-negative integers below 2^53.
function M.band(a, b)
  local r, bit = 0, 1
  while a > 0 and b > 0 do
    if a % 2 == 1 and b % 2 == 1 then r = r + bit end
    a, b, bit = floor(a / 2), floor(b / 2), bit * 2
  end
  return r
end

--- os.execute's result as 5.2+ gives it: true|nil, "exit"|"signal", code.
function M.execute(cmd)
  local a, b, c = os.execute(cmd)
  if type(a) == "number" then -- 5.1: the wait status
    local code = a >= 256 and floor(a / 256) or a
    return code == 0 or nil, "exit", code
  end
  return a, b, c
end

-- UTF-8 (Lua 5.4's utf8 library, strict: no surrogates, nothing above U+10FFFF, no overlong
-- forms) -----------------------------------------------------------------------------------
local utf8lib = rawget(_G, "utf8")
if _VERSION == "Lua 5.4" and utf8lib then
  M.utf8 = utf8lib
else
  local u = { charpattern = "[%z\1-\127\194-\253][\128-\191]*" }

  -- The code point at byte i of s and the byte after it, or nil.
  local function decode(s, i)
    local c = byte(s, i)
    if not c then return nil end
    if c < 0x80 then return c, i + 1 end
    local n, cp, min
    if c >= 0xC2 and c <= 0xDF then n, cp, min = 1, c - 0xC0, 0x80
    elseif c >= 0xE0 and c <= 0xEF then n, cp, min = 2, c - 0xE0, 0x800
    elseif c >= 0xF0 and c <= 0xF4 then n, cp, min = 3, c - 0xF0, 0x10000
    else return nil end
    for k = 1, n do
      local cc = byte(s, i + k)
      if not cc or cc < 0x80 or cc > 0xBF then return nil end
      cp = cp * 64 + (cc - 0x80)
    end
    if cp < min or cp > 0x10FFFF or (cp >= 0xD800 and cp <= 0xDFFF) then return nil end
    return cp, i + n + 1
  end

  --- utf8.len(s [, i [, j]]): the number of characters, or nil, the position of the first
  -- invalid byte.
  function u.len(s, i, j)
    i = i or 1
    j = j or #s
    if i < 0 then i = #s + i + 1 end
    if j < 0 then j = #s + j + 1 end
    local n = 0
    while i <= j do
      local cp, nxt = decode(s, i)
      if not cp then return nil, i end
      n, i = n + 1, nxt
    end
    return n
  end

  function u.char(...)
    local out = {}
    for k = 1, select("#", ...) do
      local cp = select(k, ...)
      if cp < 0x80 then out[k] = char(cp)
      elseif cp < 0x800 then out[k] = char(0xC0 + floor(cp / 64), 0x80 + cp % 64)
      elseif cp < 0x10000 then
        out[k] = char(0xE0 + floor(cp / 4096), 0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
      else
        out[k] = char(0xF0 + floor(cp / 262144), 0x80 + floor(cp / 4096) % 64, 0x80 + floor(cp / 64) % 64,
          0x80 + cp % 64)
      end
    end
    return table.concat(out)
  end

  function u.codepoint(s, i, j)
    i = i or 1
    j = j or i
    local out, n = {}, 0
    while i <= j do
      local cp, nxt = decode(s, i)
      if not cp then error("invalid UTF-8 code", 2) end
      n = n + 1
      out[n], i = cp, nxt
    end
    return M.unpack(out, 1, n)
  end

  --- utf8.offset(s, n): where the n-th character (n >= 1) starts (#s + 1 just past the
  -- last), or nil.
  function u.offset(s, n)
    local i = 1
    while n > 1 do
      if i > #s then return nil end
      local c = byte(s, i)
      i = i + 1
      if c then
        while i <= #s and byte(s, i) >= 0x80 and byte(s, i) <= 0xBF do i = i + 1 end
      end
      n = n - 1
    end
    return i
  end

  --- for p, cp in utf8.codes(s): raises on invalid UTF-8, as 5.4 does.
  function u.codes(s)
    return function(str, i)
      if i > 0 then
        local _, nxt = decode(str, i)
        i = nxt
      else
        i = 1
      end
      if i > #str then return nil end
      local cp = decode(str, i)
      if not cp then error("invalid UTF-8 code", 2) end
      return i, cp
    end, s, 0
  end

  M.utf8 = u
end

return M
