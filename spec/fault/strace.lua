-- Syscall order of one update, seen from outside with strace -f: the lock is published
-- already flocked with linkat, the temp file is created O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC
-- 0600 in the same directory, fchmod 0600, written, fsync'd, closed, pinned with an O_PATH
-- handle (which can neither read nor write: it keeps the inode the store now knows), renamed
-- over the file, the directory is fsync'd, and only then is the sentinel parked (renamed
-- away, still flocked);
-- closing the store unlinks the parked sentinel, then closes its descriptor. A second update in
-- the same process publishes the parked sentinel again with renameat2(RENAME_NOREPLACE), and
-- does not read the file it wrote itself.
-- Nothing is ever opened with O_TRUNC and the sessions file is never opened for writing.
-- Every name in the directory is reached relative to the directory's descriptor (the *at
-- calls), never by a path from the current directory: only the directory itself is.
-- With durable = false the same sequence runs without the two fsyncs.
package.path = "spec/support/?.lua;spec/?.lua;" .. package.path
local H = require "fault.harness"

if not H.sh("command -v strace") then
  H.check("strace is installed", false)
  H.finish()
end

local dir = H.tmpdir("strace")
local path = dir .. "/pair-sessions.json"
local lock = path .. ".lock"
local _, seed = H.sh("lua5.4 spec/fault/one_op.lua " .. H.q(path) .. " seed")
local sid = seed:match("^ok (%x+)")
H.check("strace: seed session created", sid ~= nil, seed)

-- strace -y prints each descriptor with its path ("3</dir>"): a name relative to a directory
-- descriptor is rewritten as the path it names ("AT_FDCWD, \"/dir/name\""), then the other
-- annotations are dropped. Names given by path from the current directory are collected.
local by_path = {}
local function resolve_at(l)
  l = l:gsub("AT_FDCWD<[^>]*>", "AT_FDCWD")
  if l:find("AT_FDCWD, \"" .. dir .. "/", 1, true) then by_path[#by_path + 1] = l end
  if l:match("^%a+at2?%(") then -- openat, renameat2, linkat, unlinkat, mkdirat: (dirfd, name)
    l = l:gsub('(%d+)<([^>]*)>, "([^"]*)"', function(_, d, name)
      return 'AT_FDCWD, "' .. (name == "." and d or d .. "/" .. name) .. '"'
    end)
  end
  return (l:gsub("(%d+)<[^>]*>%(deleted%)", "%1"):gsub("(%d+)<[^>]*>", "%1"))
end

local function trace(env, op)
  local out = dir .. "/trace"
  local ok, res = H.sh(string.format("%s strace -f -qq -y -o %s -e trace=openat,open,creat,write,fsync,fdatasync,close,rename,renameat,renameat2,linkat,link,unlink,unlinkat,flock,fchmod,fchown,mkdir,mkdirat lua5.4 spec/fault/one_op.lua %s %s %s",
    env, H.q(out), H.q(path), op or "incr", sid))
  local lines = {}
  for l in io.lines(out) do lines[#lines + 1] = resolve_at((l:gsub("^%d+%s+", ""))) end
  os.remove(out)
  return ok and res:match("^ok") ~= nil, lines, res
end

local function analyse(lines)
  local ev, fd_name, fails = {}, {}, {}
  local function add(kind, detail) ev[#ev + 1] = { kind = kind, detail = detail } end
  local function fail(s) fails[#fails + 1] = s end
  local tmp_fd, lock_fd
  for _, l in ipairs(lines) do
    local p, flags, rest = l:match('^openat%(AT_FDCWD, "([^"]*)", ([%u_|]+)(.*)$')
    if p then
      local fd = tonumber(rest:match("= (%d+)$"))
      if flags:find("O_TRUNC") and p:sub(1, #dir) == dir then fail("O_TRUNC on " .. p) end
      if p == path and (flags:find("O_WRONLY") or flags:find("O_RDWR")) then fail("sessions file opened for writing: " .. l) end
      if p == path and not flags:find("O_NOFOLLOW") then fail("sessions file opened without O_NOFOLLOW: " .. l) end
      local is_tmp = p:sub(1, #path + 5) == path .. ".tmp-"
      if is_tmp and flags:find("O_PATH") then
        -- the handle that pins the written inode: it can neither read nor write
        for _, want in ipairs { "O_NOFOLLOW", "O_CLOEXEC" } do
          if not flags:find(want) then fail("pin opened without " .. want .. ": " .. l) end
        end
        if flags:find("O_CREAT") or flags:find("O_WRONLY") or flags:find("O_RDWR") then fail("pin may write: " .. l) end
        add("pin_tmp", p)
      elseif is_tmp then
        tmp_fd = fd
        for _, want in ipairs { "O_CREAT", "O_EXCL", "O_NOFOLLOW", "O_CLOEXEC" } do
          if not flags:find(want) then fail("temp created without " .. want .. ": " .. l) end
        end
        if not rest:match("^, 0600%)") then fail("temp not created 0600: " .. l) end
        if p:match("%.tmp%-%d+%-(%x+)$") == nil or #p:match("%.tmp%-%d+%-(%x+)$") < 16 then
          fail("temp name has no unpredictable suffix: " .. p)
        end
        add("open_tmp", p)
      elseif p == path then
        add("read_file")
      elseif p == dir and flags:find("O_TMPFILE") then
        lock_fd = fd
        add("open_candidate")
      end
      if fd then fd_name[fd] = p end
    elseif l:match("^linkat%(") then
      if l:find('"' .. lock .. '"', 1, true) and l:find("= 0$") then add("linkat_lock") end
    elseif l:match("^write%(") then
      local fd = tonumber(l:match("^write%((%d+)"))
      if fd == tmp_fd and tmp_fd then add("write_tmp") elseif fd == lock_fd and lock_fd then add("write_lock") end
    elseif l:match("^fchmod%(") then
      local fd, mode = l:match("^fchmod%((%d+), (%d+)%)")
      fd = tonumber(fd)
      if fd == tmp_fd and mode == "0600" then add("fchmod_tmp")
      elseif fd == lock_fd and mode == "0500" then add("fchmod_lock") end
    elseif l:match("^flock%(") then
      local fd = tonumber(l:match("^flock%((%d+)"))
      if fd == lock_fd and l:find("LOCK_EX") and l:find("= 0$") then add("flock_lock") end
    elseif l:match("^fsync%(") or l:match("^fdatasync%(") then
      local fd = tonumber(l:match("%((%d+)%)"))
      if fd == tmp_fd and tmp_fd then add("fsync_tmp")
      elseif fd_name[fd] == dir then add("fsync_dir")
      else add("fsync_other", l) end
    elseif l:match("^close%(") then
      local fd = tonumber(l:match("^close%((%d+)%)"))
      if fd and fd == tmp_fd then add("close_tmp"); tmp_fd = nil
      elseif fd and fd == lock_fd then add("close_lock"); lock_fd = nil end
      if fd then fd_name[fd] = nil end
    elseif l:match("^rename") then
      local from, to = l:match('^rename%w*%(.-"([^"]*)",.-"([^"]*)"')
      local parked = to and to:match("^" .. lock:gsub("%p", "%%%0") .. "%.idle%-%x+$")
      if to == path and from:find(".tmp-", 1, true) then add("rename")
      elseif from == lock and parked and l:find("RENAME_NOREPLACE") and l:find("= 0$") then add("park_lock")
      elseif to == lock and from:match("%.idle%-%x+$") and l:find("RENAME_NOREPLACE") and l:find("= 0$") then
        add("publish_parked")
      end
    elseif l:match("^unlink") then
      if l:find('"' .. lock .. '"', 1, true) then add("unlink_lock")
      elseif l:find(lock .. ".idle-", 1, true) then add("unlink_parked") end
    end
  end
  return ev, fails
end

-- The order the promises require (one update = the transaction that writes).
local WANT = { "open_candidate", "write_lock", "fchmod_lock", "flock_lock", "linkat_lock",
  "read_file", "open_tmp", "fchmod_tmp", "write_tmp", "fsync_tmp", "close_tmp", "pin_tmp", "rename", "fsync_dir",
  "park_lock", "unlink_parked", "close_lock" }
-- A later transaction of the same process, with the sentinel parked by the one before, does
-- not even open the file: the path still names the inode it wrote and pins.
local WANT_PARKED = { "publish_parked", "open_tmp", "fchmod_tmp", "write_tmp", "fsync_tmp",
  "close_tmp", "pin_tmp", "rename", "fsync_dir", "park_lock", "unlink_parked", "close_lock" }

local function order_of(ev)
  -- the last transaction (the one containing the rename)
  local start = 1
  for i, e in ipairs(ev) do
    if e.kind == "open_candidate" or e.kind == "publish_parked" then start = i end
  end
  local got = {}
  for i = start, #ev do
    local k = ev[i].kind
    if k ~= got[#got] then got[#got + 1] = k end -- several writes count as one step
  end
  return table.concat(got, " ")
end

local function check_order(name, ev, want)
  local g, w = order_of(ev), table.concat(want, " ")
  H.check(name .. ": " .. w, g == w, "got: " .. g)
  return g
end

local ok, lines, res = trace("")
H.check("strace: the traced update succeeded", ok, res)
local ev, fails = analyse(lines)
H.check("strace: flags and modes (O_EXCL|O_NOFOLLOW|O_CLOEXEC 0600 temp, no O_TRUNC, file never opened for writing)", #fails == 0 and #ev > 10, table.concat(fails, "; "))
local got = check_order("strace: order", ev, WANT)
H.check("strace: every name in the directory is relative to its descriptor (*at calls)", #by_path == 0,
  table.concat(by_path, "; "))

-- durable = false: the same without the two fsyncs.
local ok2, lines2, res2 = trace("PS_DURABLE=0")
H.check("strace: the traced update (durable = false) succeeded", ok2, res2)
local ev2, fails2 = analyse(lines2)
H.check("strace: durable = false flags", #fails2 == 0 and #ev2 > 10, table.concat(fails2, "; "))
local want2 = {}
for _, k in ipairs(WANT) do if k ~= "fsync_tmp" and k ~= "fsync_dir" then want2[#want2 + 1] = k end end
check_order("strace: durable = false order", ev2, want2)

-- Two updates in one process: the second publishes the parked sentinel again. Whether it may
-- skip reading the file it wrote depends on a timing probe of the first write (a ctime change
-- under 500 us), which a loaded machine under strace can miss: then it reads the file once,
-- which is correct but not the path under test. Up to three tries; a regression fails all.
local major, minor = io.popen("uname -r"):read("l"):match("^(%d+)%.(%d+)")
if tonumber(major) * 1000 + tonumber(minor) < 6013 then table.insert(WANT_PARKED, 2, "read_file") end
local ok3, lines3, res3
for _ = 1, 3 do
  ok3, lines3, res3 = trace("", "incr2")
  if not ok3 or order_of((analyse(lines3))) == table.concat(WANT_PARKED, " ") then break end
end
H.check("strace: two traced updates in one process succeeded", ok3, res3)
local ev3, fails3 = analyse(lines3)
H.check("strace: second update flags", #fails3 == 0, table.concat(fails3, "; "))
local n_candidates = 0
for _, e in ipairs(ev3) do if e.kind == "open_candidate" then n_candidates = n_candidates + 1 end end
H.check("strace: one sentinel made for both updates", n_candidates == 1, tostring(n_candidates))
-- (Without multigrain timestamps, Linux < 6.13, a pinned inode is not proof enough: read.)
check_order("strace: second update order", ev3, WANT_PARKED)

H.check("strace: sentinel gone, no temp left", #H.ls(dir) == 1, table.concat(H.ls(dir), " "))
H.rmrf(dir)
print("strace: " .. #lines .. " calls traced, order " .. got)
H.finish()
