--- pairstore.text: what outside text (a server's version or message, a session field, a file
-- name) may be shown as, on a terminal or in a file an operator reads (`pairstore` and its
-- output, a metrics exposition). One classification of the characters that hide or act.
local compat = require "pairstore.compat"
local utf8 = compat.utf8

local M = {}

-- Escaping -----------------------------------------------------------------------------------
-- Printable ASCII and printable UTF-8 stay as they are. Escaped: backslash (\\), C0 controls
-- and DEL (\n, \r, \t, \e, else \xHH), bytes that are not valid UTF-8 (\xHH), and characters a
-- terminal acts on or that disguise text: C1 controls, bidirectional controls (embeddings,
-- overrides, isolates, marks), zero-width characters, line and paragraph separators, the BOM
-- (\u{HHHH}).

local C0_NAMES = { [9] = "\\t", [10] = "\\n", [13] = "\\r", [27] = "\\e" }

local function hidden_char(cp)
  return cp < 0x20 or (cp >= 0x7f and cp <= 0x9f) or cp == 0x61c or (cp >= 0x200b and cp <= 0x200f)
    or (cp >= 0x2028 and cp <= 0x202e) or (cp >= 0x2060 and cp <= 0x2069) or cp == 0xfeff
    or (cp >= 0xfff9 and cp <= 0xfffb)
end
M.hidden_char = hidden_char

-- Calls each(kind, text, cp) for every piece of s: kind "ascii" (a run of printable ASCII),
-- "char" (one valid UTF-8 character, code point cp) or "byte" (a byte that is not part of one).
local function scan(s, each)
  local i, n = 1, #s
  while i <= n do
    local j = s:find("[^\32-\126]", i)
    if j ~= i then
      each("ascii", s:sub(i, (j or n + 1) - 1))
      if not j then return end
      i = j
    end
    local c = s:byte(i)
    local len = c < 0x80 and 1 or c >= 0xf0 and 4 or c >= 0xe0 and 3 or 2
    local ch = s:sub(i, i + len - 1)
    if c < 0x80 or (c >= 0xc2 and c <= 0xf4 and #ch == len and utf8.len(ch) == 1) then
      each("char", ch, utf8.codepoint(ch))
      i = i + len
    else
      each("byte", string.char(c))
      i = i + 1
    end
  end
end
M.scan = scan

--- The terminal-safe form of any text (a non-string is shown as tostring gives it).
function M.visible(s)
  s = type(s) == "string" and s or tostring(s)
  local parts = {}
  scan(s, function(kind, text, cp)
    if kind == "ascii" then
      parts[#parts + 1] = (text:gsub("\\", "\\\\"))
    elseif kind == "byte" then
      parts[#parts + 1] = string.format("\\x%02x", text:byte())
    elseif hidden_char(cp) then
      parts[#parts + 1] = C0_NAMES[cp] or (cp < 0x80 and string.format("\\x%02x", cp))
        or string.format("\\u{%04x}", cp)
    else
      parts[#parts + 1] = text
    end
  end)
  return table.concat(parts)
end

return M
