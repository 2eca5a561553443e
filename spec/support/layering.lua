-- make check-layering: which C file defines and which uses each ps_ symbol (from nm over one
-- object per source file), and whether any files use each other, directly or around a longer
-- cycle. Prints the file graph, then "N passed, N failed".
--   lua spec/support/layering.lua OBJDIR OBJ...   (OBJDIR/<source>.o for each source)
--   LAYERING_SYMBOLS=1 also lists each symbol with its file and its users.
local objdir = assert(arg[1], "usage: layering.lua OBJDIR OBJ...")
local defines, uses, files = {}, {}, {}
for i = 2, #arg do
  local obj = arg[i]
  local src = obj:sub(#objdir + 2):gsub("%.o$", "")
  files[#files + 1] = src
  uses[src] = {}
  local p = assert(io.popen("nm " .. obj))
  for line in p:lines() do
    local kind, name = line:match("^%x*%s+(%a)%s+(ps_[%w_]+)$")
    if kind == "U" then
      uses[src][name] = true
    elseif kind and kind:match("[TDBR]") then
      assert(not defines[name], name .. " defined in " .. tostring(defines[name]) .. " and " .. src)
      defines[name] = src
    end
  end
  assert(p:close(), "nm " .. obj .. " failed")
end
table.sort(files)

-- file -> the files whose ps_ symbols it uses (and which symbols)
local deps = {}
for _, f in ipairs(files) do
  deps[f] = {}
  for name in pairs(uses[f]) do
    local d = defines[name]
    if d and d ~= f then
      deps[f][d] = deps[f][d] or {}
      table.insert(deps[f][d], name)
    end
  end
end

local passed, failed = 0, 0
local function check(what, ok, detail)
  if ok then passed = passed + 1; print("ok   " .. what)
  else failed = failed + 1; print("FAIL " .. what .. (detail and (": " .. detail) or "")) end
end

for _, f in ipairs(files) do
  local list = {}
  for d in pairs(deps[f]) do list[#list + 1] = d end
  table.sort(list)
  print(string.format("%-30s uses %s", f, #list > 0 and table.concat(list, " ") or "-"))
end

-- LAYERING_SYMBOLS=1: each symbol, the file that defines it and the files that use it.
if os.getenv("LAYERING_SYMBOLS") == "1" then
  local names = {}
  for name in pairs(defines) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    local users = {}
    for _, f in ipairs(files) do if uses[f][name] then users[#users + 1] = f end end
    print(string.format("%-32s %-28s <- %s", name, defines[name], table.concat(users, " ")))
  end
end

-- Pairs first (the plainest report), then any longer cycle (depth-first search).
local pairs_found = {}
for _, a in ipairs(files) do
  for b, syms in pairs(deps[a]) do
    if a < b and deps[b][a] then
      table.sort(syms)
      local back = deps[b][a]
      table.sort(back)
      pairs_found[#pairs_found + 1] = string.format("%s uses %s of %s, which uses %s of it", a,
        table.concat(syms, ","), b, table.concat(back, ","))
    end
  end
end
check("no two C files use each other", #pairs_found == 0, table.concat(pairs_found, "; "))

local state, cycle = {}, nil
local function visit(f, path)
  state[f] = "open"
  path[#path + 1] = f
  local next_files = {}
  for d in pairs(deps[f]) do next_files[#next_files + 1] = d end
  table.sort(next_files)
  for _, d in ipairs(next_files) do
    if cycle then break end
    if state[d] == "open" then
      local from
      for i, p in ipairs(path) do if p == d then from = i end end
      cycle = table.concat(path, " -> ", from) .. " -> " .. d
    elseif not state[d] then
      visit(d, path)
    end
  end
  path[#path] = nil
  state[f] = "done"
end
for _, f in ipairs(files) do
  if not state[f] and not cycle then visit(f, {}) end
end
check("no cycle among the C files' uses of each other", cycle == nil, cycle)
print(string.format("%d passed, %d failed", passed, failed))
os.exit(failed == 0 and 0 or 1)
