-- Used by the examples when they run from a source tree (after `make`): puts the tree's
-- lua/ and build/<runtime>/ ahead of any installed copy, unless LUA_PATH / LUA_CPATH say otherwise.
-- Called with the tree's root: loadfile("examples/lib/source_tree.lua")(root).
local root = ...
local f = io.open(root .. "/lua/pairstore/init.lua")
if not f then return end
f:close()
if not os.getenv("LUA_PATH") then
  package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
end
if not os.getenv("LUA_CPATH") then -- the build of this interpreter: build/lua5.4, build/luajit, ...
  local runtime = assert(loadfile(root .. "/lua/pairstore/compat.lua"))().runtime
  package.cpath = root .. "/build/" .. runtime .. "/?.so;" .. package.cpath
end
