--- spec/bench/cgsummary.lua — summarise callgrind_annotate output for spec/bench/profile.sh.
--   cgsummary.lua OPS INCLUSIVE_TXT SELF_TXT
-- Prints instructions per operation, the inclusive share of the functions that matter to the
-- store (ours, cjson's entry points, libsodium, libc), the top inclusive functions and the self
-- cost per shared object. /usr/bin/lua5.4 and cjson.so are stripped: their internal functions
-- are addresses; for the Debian 12 builds the addresses are labelled (names inferred from who
-- calls them, marked ~).
local ops, incl_path, self_path = tonumber(arg[1]), arg[2], arg[3]
local fmt = string.format

local function pkgver(p)
  local h = io.popen("dpkg-query -W -f='${Version}' " .. p .. " 2>/dev/null")
  local v = h:read("a")
  h:close()
  return v
end

local LABELS = {}
if pkgver("lua5.4") == "5.4.4-3+deb12u1" then
  for addr, name in pairs {
    ["0x0000000000018450"] = "~luaH_newkey (insert; via lua_rawset)",
    ["0x0000000000018050"] = "~luaH_resize (rehash of a growing table)",
    ["0x0000000000017620"] = "~luaH_next (via lua_next)",
    ["0x0000000000017500"] = "~findindex (luaH_next)",
    ["0x0000000000017340"] = "~main position / key lookup",
    ["0x0000000000017160"] = "~internshrstr (via lua_pushlstring)",
    ["0x00000000000171f0"] = "~luaS_new (string cache; via lua_getfield)",
    ["0x0000000000017970"] = "~luaH_getshortstr (via lua_getfield)",
    ["0x0000000000017a20"] = "~luaH_get (via lua_rawget)",
    ["0x0000000000017b60"] = "~luaH_set / getgeneric",
    ["0x000000000001f480"] = "~l_alloc (realloc/free)",
    ["0x00000000000122e0"] = "~GC object sweep/free",
    ["0x0000000000008870"] = "~index2value (API stack access)",
  } do LABELS[addr .. "@lua5.4"] = name end
end
if pkgver("lua-cjson") == "2.1.0+dfsg-2.2" then
  for addr, name in pairs {
    ["0x0000000000003c80"] = "~cjson json_decode (entry)",
    ["0x0000000000003880"] = "~cjson parse value/object/array",
    ["0x0000000000002ea0"] = "~cjson json_next_token (lexer)",
    ["0x00000000000045a0"] = "~cjson json_encode (entry)",
    ["0x0000000000003e20"] = "~cjson json_append_data",
  } do LABELS[addr .. "@cjson"] = name end
end

local function objname(obj)
  if not obj then return "?" end
  local base = obj:match("([^/]+)$") or obj
  if base:find("cjson") then return "cjson" end
  if base:find("^libc%.so") then return "libc" end
  if base:find("sodium") then return "libsodium" end
  if base:find("^ld%-linux") then return "ld.so" end
  return base
end

-- Lines: "  1,234 (12.34%)  file:function [object]"
local function parse(path)
  local rows, total = {}, nil
  for line in io.lines(path) do
    local ir, rest = line:match("^%s*([%d,]+) %(%s*[%d.]+%%%)%s+(.-)%s*$")
    if ir then
      ir = tonumber((ir:gsub(",", "")))
      if rest == "PROGRAM TOTALS" then
        total = ir
      elseif not rest:find("'%d") then -- recursion cycles counted twice: skip
        local where, obj = rest:match("^(.-) %[(.-)%]$")
        where = where or rest
        local fn = where:match(":([^:]+)$") or where
        rows[#rows + 1] = { ir = ir, fn = fn, obj = obj and objname(obj) or nil, where = where }
      end
    end
  end
  return rows, total
end

local incl, total = parse(incl_path)
local selfrows = parse(self_path)
local function pct(v) return 100 * v / total end
local function label(r)
  local l = LABELS[r.fn .. "@" .. tostring(r.obj)]
  if l then return l end
  if r.obj and r.obj ~= "core.so" then return r.fn .. " [" .. r.obj .. "]" end
  return r.fn
end

print(fmt("  %.0f instructions per operation (%s in %d operations)", total / ops, total, ops))

-- One figure per function name: the largest (duplicates come from inlining/debug info).
local best = {}
for _, r in ipairs(incl) do
  local key = r.fn .. "@" .. tostring(r.obj or "core.so")
  if r.obj == nil then key = r.fn .. "@core.so" end
  if not best[key] or best[key].ir < r.ir then best[key] = r end
end

print("  Inclusive share of the parts that matter (0 = not reached):")
local KEY = {
  { "txn_body", "core.so", "the whole transaction (txn_body)" },
  { "ps_lock_acquire", "core.so", "lock acquire (ps_lock_acquire)" },
  { "ps_lock_release", "core.so", "lock release (ps_lock_release)" },
  { "load", "core.so", "load (read + decode + validate)" },
  { "ps_file_load", "core.so", "  ps_file_load (open/fstat/read)" },
  { "0x0000000000003c80", "cjson", "  cjson decode" },
  { "ps_validate_session", "core.so", "  ps_validate_session" },
  { "ps_check_value", "core.so", "    ps_check_value" },
  { "fe_prune_due", "core.so", "fe_prune_due (every transaction)" },
  { "find_sid", "core.so", "find_sid" },
  { "ps_copy_value", "core.so", "ps_copy_value (copies handed out / to mutators)" },
  { "act_update", "core.so", "act_update" },
  { "act_create", "core.so", "act_create" },
  { "fe_list", "core.so", "fe_list" },
  { "commit", "core.so", "commit (encode + write)" },
  { "ps_json_encode", "core.so", "  ps_json_encode" },
  { "encode_value", "core.so", "    encode_value" },
  { "encode_value.constprop.0", "core.so", "    encode_value" },
  { "0x00000000000045a0", "cjson", "    cjson encode (operatorContext etc.)" },
  { "ps_buf_add", "core.so", "  ps_buf_add (buffer growth)" },
  { "ps_file_commit", "core.so", "  ps_file_commit (temp/write/fsync/rename)" },
  { "sodium_memzero", "libsodium", "sodium_memzero (wiping buffers)" },
  { "__memcpy_avx_unaligned_erms", "libc", "memcpy" },
  { "__memcmp_avx2_movbe", "libc", "memcmp" },
  { "__strcmp_avx2", "libc", "strcmp" },
  { "malloc", "libc", "malloc" },
  { "free", "libc", "free" },
  { "realloc", "libc", "realloc" },
  { "strtod", "libc", "strtod (cjson numbers)" },
  { "snprintf", "libc", "snprintf" },
  { "lua_getfield", "lua5.4", "lua_getfield" },
  { "lua_next", "lua5.4", "lua_next" },
  { "lua_rawset", "lua5.4", "lua_rawset" },
  { "lua_pushlstring", "lua5.4", "lua_pushlstring" },
  { "lua_createtable", "lua5.4", "lua_createtable" },
}
local seen = {}
for _, k in ipairs(KEY) do
  local r = best[k[1] .. "@" .. k[2]]
  if r and not seen[k[3]] then
    seen[k[3]] = true
    print(fmt("    %-52s %6.2f%%  %10.0f Ir/op", k[3], pct(r.ir), r.ir / ops))
  end
end

print("  Top inclusive functions (below the driver frames):")
local list = {}
for _, r in pairs(best) do
  if r.ir < 0.995 * total then list[#list + 1] = r end
end
table.sort(list, function(a, b) return a.ir > b.ir end)
for i = 1, math.min(25, #list) do
  print(fmt("    %6.2f%%  %s", pct(list[i].ir), label(list[i])))
end

print("  Self cost by shared object:")
local byobj = {}
for _, r in ipairs(selfrows) do
  local o = r.obj or "core.so"
  byobj[o] = (byobj[o] or 0) + r.ir
end
local objs = {}
for o, v in pairs(byobj) do objs[#objs + 1] = { o = o, v = v } end
table.sort(objs, function(a, b) return a.v > b.v end)
for _, o in ipairs(objs) do
  local what = ({ ["lua5.4"] = "Lua VM: tables, strings, GC, API", cjson = "JSON parse/print",
    ["core.so"] = "pairstore C core", libc = "memcpy/memset/malloc/strcmp/...", libsodium = "libsodium" })[o.o] or ""
  print(fmt("    %6.2f%%  %-12s %s", pct(o.v), o.o, what))
end
