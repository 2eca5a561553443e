--- pairstore corrupt [--remove]: the sessions files the store moved aside.
-- They are `<path>.corrupt-<ms>`, where the store moves a sessions file it could not parse,
-- and hold what that file held: private keys and codes. Listed with `find` (never following
-- a symlink); their age is their mtime's (a name is only a name: it may have been given by
-- hand); removed only when a regular file owned by the effective uid (unlink never follows
-- the last component, so a file swapped for a symlink meanwhile is at worst that symlink).
local core = require "pairstore.core"
local output = require "pairstore.cli.output"
local visible = output.visible

local function corrupt_files(ctx, path)
  local dir, base = path:match("^(.*)/([^/]*)$")
  if not dir then dir, base = ".", path end
  if dir == "" then dir = "/" end
  local prefix = base .. ".corrupt-"
  local qdir = "'" .. dir:gsub("'", "'\\''") .. "'"
  local p = io.popen("find -H " .. qdir .. " -mindepth 1 -maxdepth 1 -printf '%y %U %m %s %T@ %f\\0' 2>&1; echo \"rc=$?\"")
  local text = p:read("*a")
  p:close()
  local rc = text:match("rc=(%d+)\n$")
  if rc ~= "0" then
    local msg = text:gsub("rc=%d+\n$", ""):gsub("%z", "\n")
    ctx:die("cannot list " .. dir .. ": " .. (msg:match("([^\n]*)\n?$") or msg))
  end
  local files = {}
  for entry in text:gsub("rc=%d+\n$", ""):gmatch("([^%z]*)%z") do
    local kind, uid, mode, size, mtime, name = entry:match("^(%S+) (%d+) (%d+) (%d+) ([%d.]+) (.*)$")
    if name and name:sub(1, #prefix) == prefix then
      files[#files + 1] = {
        name = name, full = (dir == "/" and "" or dir) .. "/" .. name, kind = kind,
        uid = tonumber(uid), mode = mode, size = tonumber(size), mtime = tonumber(mtime),
      }
    end
  end
  table.sort(files, function(a, b) return a.name < b.name end)
  return files, dir
end

local function effective_uid()
  local p = io.popen("id -u")
  local uid = tonumber(p:read("*l") or "")
  p:close()
  return uid
end

local KIND = { f = "file", l = "symlink", d = "directory", p = "fifo", s = "socket", c = "device", b = "device" }

local function run(ctx, args, store)
  if store:backend() ~= "file" then
    -- (only the file engine moves an unreadable store aside)
    ctx.w:out("no corrupt files: ", visible(ctx.w:scrub(store.path)), " is not a file store\n")
    return 0
  end
  local files, dir = corrupt_files(ctx, store.path)
  if #files == 0 then
    ctx.w:out("no corrupt files beside ", visible(store.path), "\n")
    return 0
  end
  local euid = effective_uid()
  local now = core.now_ms()
  local rows = { { "NAME", "SIZE", "MODE", "AGE", "NOTE" } }
  for _, f in ipairs(files) do
    local note = {}
    if f.kind ~= "f" then note[#note + 1] = "a " .. (KIND[f.kind] or "special file") .. ", not a file" end
    if f.uid ~= euid then note[#note + 1] = "owned by uid " .. tostring(f.uid) end
    local mode = tonumber(f.mode, 8) or 0
    if f.kind == "f" and mode % 64 ~= 0 then note[#note + 1] = "readable by others" end
    local at = math.floor(f.mtime * 1000)
    f.removable = f.kind == "f" and f.uid == euid
    f.note = table.concat(note, "; ")
    rows[#rows + 1] = { visible(f.name), tostring(f.size), string.format("%04o", mode),
      now >= at and output.duration(now - at) or "?", f.note }
  end
  if not args.remove then
    ctx.w:out("Corrupt sessions files moved aside in ", visible(dir), " (they hold private keys and codes):\n")
    ctx.w:out(output.table_lines(rows, true))
    ctx.w:out("Remove them with `pairstore corrupt --remove` once you no longer need them.\n")
    return 0
  end
  local rc = 0
  for _, f in ipairs(files) do
    if not f.removable then
      ctx.w:warn("pairstore: not removed: ", f.name, ": ", f.note)
      rc = 2
    else
      local ok, err = os.remove(f.full)
      if ok then ctx.w:out("removed ", visible(f.name), "\n")
      else
        ctx.w:warn("pairstore: cannot remove ", f.name, ": ", tostring(err))
        rc = 2
      end
    end
  end
  return rc
end

return {
  summary = "List (or remove) corrupt sessions files moved aside.",
  epilog = "A sessions file the store cannot parse is moved to PATH.corrupt-<ms> (mode 0600). Such a\n"
    .. "file holds what the sessions file held: private keys and codes. This lists them with size,\n"
    .. "mode and age (from the file's modification time); --remove deletes those that are regular\n"
    .. "files owned by you (never a symlink or another user's file; exit 2 if any is left).",
  define = function(cmd)
    cmd:flag("--remove", "Delete them.")
  end,
  run = run,
}
