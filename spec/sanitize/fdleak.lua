-- No pairstore descriptor leaks into children: a child started with os.execute from inside a
-- mutator (the lock held, the data file read) must inherit exactly the descriptors that a
-- child started outside the store gets; none of them may point into the store's directory or be
-- an inotify instance. And while a process waits for the lock (its inotify descriptor and the
-- sentinel it inspects are open), every such descriptor carries O_CLOEXEC.
package.path = "spec/support/?.lua;spec/?.lua;" .. package.path
local H = require "fault.harness"
local pairstore = require "pairstore"

local dir = H.tmpdir("fdleak")
local path = dir .. "/pair-sessions.json"
local aux = H.tmpdir("fdleak-aux") -- outputs and scripts, outside the store's directory
local store = pairstore.open(path)
local s = assert(store:create {})

local LIST = "sh -c 'for f in /proc/$$/fd/*; do printf \"%s \" \"${f##*/}\"; readlink \"$f\"; done' > "
local function child_fds(out)
  os.execute(LIST .. H.q(out))
  local t = {}
  for l in io.lines(out) do
    if not l:find(out, 1, true) then t[#t + 1] = l end -- the redirection itself
  end
  table.sort(t)
  return t
end

local outside = child_fds(aux .. "/fd-outside")
local inside
assert(store:update(s.sid, function(x)
  inside = child_fds(aux .. "/fd-inside")
  x.secondaryCodeAttempts = x.secondaryCodeAttempts + 1
end))
local bad = {}
for _, l in ipairs(inside) do
  if l:find(dir, 1, true) or l:find("inotify", 1, true) then bad[#bad + 1] = l end
end
H.check("fdleak: a child started inside a mutator inherits no pairstore descriptor", #bad == 0, table.concat(bad, ", "))
H.check("fdleak: ... and exactly the descriptors of a child started outside",
  table.concat(inside, "|") == table.concat(outside, "|"), "outside: " .. table.concat(outside, ", ") .. "; inside: " .. table.concat(inside, ", "))

-- Negative control: a descriptor opened without O_CLOEXEC (Lua's io.open) into the directory is
-- seen by the same check.
do
  local f = assert(io.open(dir .. "/control", "w"))
  local seen_ctl = false
  for _, l in ipairs(child_fds(aux .. "/fd-control")) do
    if l:find(dir .. "/control", 1, true) then seen_ctl = true end
  end
  f:close()
  os.remove(dir .. "/control")
  H.check("fdleak: negative control: an inherited descriptor into the directory is caught", seen_ctl)
end

-- A waiter's descriptors: hold the lock in one process, inspect the waiting one.
local lua_env = string.format("LUA_PATH=%s LUA_CPATH=%s", H.q(os.getenv("LUA_PATH")), H.q(os.getenv("LUA_CPATH")))
local holder = aux .. "/holder.lua"
H.write(holder, string.format([[
  local st = require("pairstore").open(%q)
  st:update(%q, function() io.open(%q, "w"):close() os.execute("sleep 2") end)
]], path, s.sid, aux .. "/held"))
local waiter = aux .. "/waiter.lua"
H.write(waiter, string.format([[ local st = require("pairstore").open(%q) st:get(%q) ]], path, s.sid))
local _, out = H.sh(string.format([==[
  %s lua5.4 %s & h=$!
  while [ ! -e %s ]; do sleep 0.01; done
  %s lua5.4 %s & w=$!
  sleep 0.5
  for f in /proc/$w/fd/*; do
    t=$(readlink "$f"); n=${f##*/}
    flags=$(sed -n 's/^flags:[[:space:]]*//p' /proc/$w/fdinfo/$n)
    echo "fd $n $flags $t"
  done
  wait $h $w
]==], lua_env, H.q(holder), H.q(aux .. "/held"), lua_env, H.q(waiter)))
local seen, missing = 0, {}
for n, flags, target in out:gmatch("fd (%d+) (%d+) ([^\n]*)") do
  if target:find(dir, 1, true) or target:find("inotify", 1, true) then
    seen = seen + 1
    if (tonumber(flags, 8) & tonumber("2000000", 8)) == 0 then missing[#missing + 1] = n .. " -> " .. target end
  end
end
H.check("fdleak: the waiter had its pairstore descriptors open (" .. seen .. ")", seen >= 2, out)
H.check("fdleak: every one of them is O_CLOEXEC", #missing == 0, table.concat(missing, ", "))
print(string.format("fdleak: child inside a mutator saw %d descriptors (same as outside), waiter had %d pairstore descriptors, %d without O_CLOEXEC",
  #inside, seen, #missing))
H.rmrf(dir)
H.rmrf(aux)
H.finish()
