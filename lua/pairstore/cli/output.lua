--- pairstore.cli.output: everything the CLI writes goes through here. `visible`
-- (pairstore.text's) is the one function that turns outside text (session fields, server
-- and libpq messages, file paths, event details, library errors) into text a terminal
-- cannot act on; the writer keeps every write to stdout checked and writes stderr only as
-- escaped lines.

local M = {}

local compat = require "pairstore.compat"
local utf8 = compat.utf8

-- Escaping: pairstore.text, the one place that decides what a terminal may be shown.
local ptext = require "pairstore.text"
M.hidden_char, M.scan, M.visible = ptext.hidden_char, ptext.scan, ptext.visible
local hidden_char, scan = ptext.hidden_char, ptext.scan
local visible = M.visible

-- The shortest text of a float that reads back as the same number.
local function number_text(v)
  if compat.is_integer(v) then return string.format("%d", v) end
  for prec = 15, 17 do
    local t = string.format("%." .. prec .. "g", v)
    if tonumber(t) == v then return t end
  end
  return tostring(v)
end

--- Any value as one line of display text: strings through visible(), tables as JSON-like
-- text (object keys sorted) whose strings are made visible too.
local function display(v, quoted, depth)
  depth = depth or 0
  local t = type(v)
  if t == "string" then
    if not quoted then return visible(v) end
    return '"' .. visible(v):gsub('"', '\\"') .. '"'
  elseif t == "number" then
    return number_text(v)
  elseif t == "table" then
    if depth > 20 then return "{...}" end
    local n, keys = #v, {}
    for k in pairs(v) do keys[#keys + 1] = k end
    if n > 0 and #keys == n then
      local items = {}
      for i = 1, n do items[i] = display(v[i], true, depth + 1) end
      return "[" .. table.concat(items, ",") .. "]"
    end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    local items = {}
    for i, k in ipairs(keys) do
      items[i] = display(tostring(k), true) .. ":" .. display(v[k], true, depth + 1)
    end
    return "{" .. table.concat(items, ",") .. "}"
  elseif v == nil or (t == "userdata" and v == require("cjson").null) then
    return "null"
  end
  return visible(tostring(v))
end
M.display = display

--- The first 8 characters of a sid for a table: a hand-edited file's sid may hold anything,
-- so it is made visible first (and cut by characters, never inside one).
function M.short_sid(sid)
  local v = visible(type(sid) == "string" and sid or tostring(sid))
  local cut = utf8.offset(v, 9)
  return cut and v:sub(1, cut - 1) or v
end

-- For --json: every string (keys too) made valid UTF-8, each invalid byte replaced by U+FFFD.
local function valid_utf8(s)
  if utf8.len(s) then return s end
  local parts = {}
  scan(s, function(kind, text)
    parts[#parts + 1] = kind == "byte" and "\239\191\189" or text
  end)
  return table.concat(parts)
end

local function utf8_copy(v, depth)
  if type(v) == "string" then return valid_utf8(v) end
  if type(v) ~= "table" or depth > 600 then return v end -- (a session nests 512 levels at most)
  local c = {}
  for k, x in pairs(v) do
    c[type(k) == "string" and valid_utf8(k) or k] = utf8_copy(x, depth + 1)
  end
  return c
end
function M.utf8_copy(v) return utf8_copy(v, 0) end

--- A JSON text with the characters hidden_char names written as \uHHHH escapes (the JSON
-- writer escapes C0 and DEL already; only string contents can hold other characters).
function M.escape_hidden(text)
  local parts = {}
  scan(text, function(_, piece, cp)
    parts[#parts + 1] = (cp and cp >= 0x7f and hidden_char(cp)) and string.format("\\u%04x", cp) or piece
  end)
  return table.concat(parts)
end

function M.local_time(ms)
  if type(ms) ~= "number" or ms ~= ms or math.abs(ms) > 2 ^ 52 then return display(ms) end
  return os.date("%Y-%m-%d %H:%M:%S", math.floor(ms / 1000))
end

function M.duration(ms)
  local s = compat.tointeger(math.floor(ms / 1000)) or 0
  local floor = math.floor
  if s >= 3600 then return string.format("%dh%02dm%02ds", floor(s / 3600), floor(s % 3600 / 60), s % 60) end
  if s >= 60 then return string.format("%dm%02ds", floor(s / 60), s % 60) end
  return string.format("%ds", s)
end

--- Rows of display cells as aligned columns (two spaces apart, the last column unpadded).
function M.table_lines(rows, trim)
  local widths, lines = {}, {}
  for _, r in ipairs(rows) do
    for i, cell in ipairs(r) do widths[i] = math.max(widths[i] or 0, utf8.len(cell)) end
  end
  for _, r in ipairs(rows) do
    local cells = {}
    for i, cell in ipairs(r) do
      cells[i] = i == #r and cell or cell .. string.rep(" ", widths[i] - utf8.len(cell))
    end
    local line = table.concat(cells, "  ")
    lines[#lines + 1] = (trim and line:gsub("%s+$", "") or line) .. "\n"
  end
  return table.concat(lines)
end

-- Passwords ----------------------------------------------------------------------------------
-- The passwords given in store targets are never printed, whatever produced the text: the
-- library keeps them out of store.path and of its messages; this is the CLI's own guard for
-- everything it writes to stderr.


-- The writer ---------------------------------------------------------------------------------

local EPIPE = 32 -- (Linux)

local Writer = {}
Writer.__index = Writer

--- A writer over two streams (anything with :write(...) and :flush() as Lua's files have;
-- the process's io.stdout and io.stderr for the command line, files or buffers in-process).
function M.writer(stdout, stderr)
  return setmetatable({ stdout = stdout, stderr = stderr, secrets = {} }, Writer)
end

--- Notes a text the command was given (an argument, a variable) that may be a target, so
-- that stderr shows it only in its display form (pairstore.hide_targets: the library's one
-- way of naming a target; no password is searched for).
function Writer:note_secrets(text)
  if type(text) == "string" and text ~= "" then self.secrets[#self.secrets + 1] = text end
end

--- text with every noted target replaced by its display form.
function Writer:scrub(s)
  s = tostring(s)
  if #self.secrets == 0 then return s end
  return require("pairstore").hide_targets(s, self.secrets)
end

--- Writes display-safe pieces (built with visible/display, or the CLI's own text) to stdout.
-- Every write is checked: the first failure is kept (self.err, self.errno) and nothing more
-- is written after it.
function Writer:out(...)
  if self.err then return false end
  local ok, err, errno = self.stdout:write(...)
  if not ok then
    self.err, self.errno = err or "write error", errno
    return false
  end
  return true
end

--- Flushes stdout: true, or false and the reason the output (so far) could not be written.
-- On the process's own stdout the stream's error flag is checked too: stdio drops a buffer
-- it could not write, and a flush after that reports success (a line-buffered stream even
-- reports the failed write itself as done); only the flag remembers.
function Writer:flush()
  if not self.err then
    local ok, err, errno = self.stdout:flush()
    if not ok then
      self.err, self.errno = err or "write error", errno
    elseif self.check_stream then
      ok, err, errno = self.check_stream()
      if not ok then self.err, self.errno = err, errno end
    end
  end
  return self.err == nil, self.err
end

--- Whether the output failed because its reader went away (a closed pipe).
function Writer:broken_pipe()
  return self.errno == EPIPE
end

--- Writes one line to stderr: the pieces joined, every password scrubbed, and the whole made
-- visible (outside text reaches stderr only this way; a trailing newline is the line's end).
function Writer:warn(...)
  local n = select("#", ...)
  local parts = { ... }
  for i = 1, n do parts[i] = tostring(parts[i]) end
  local text = table.concat(parts, "", 1, n):gsub("\n$", "")
  self.stderr:write(visible(self:scrub(text)), "\n")
end

return M
