--- pairstore.qr: QR codes for pairing URLs, drawn in a terminal.
--
-- The matrix comes from libqrencode through the C core (error correction level M, the
-- smallest version that fits). Two renderings:
--
-- * Unicode half blocks (default): two matrix rows per text line, with the characters
--   "▀", "▄", "█" and space. Convention (the one of `qrencode -t UTF8` and most terminal QR
--   tools): the glyphs paint the LIGHT modules and the quiet zone, and a space lets the
--   terminal background show through as a DARK module. That is right on the usual dark
--   terminal background with light text. On a light terminal pass `invert = true`, which
--   paints the dark modules instead (the quiet zone is then left to the light background).
--   Phone scanners read both, but a code whose quiet zone is painted reads most reliably.
-- * ASCII (`ascii = true`): one matrix row per line, "##" for a dark module and two spaces
--   for a light one (dark ink on a light background: meant for a light terminal, a log or
--   a file; the quiet zone is spaces).
--
-- The quiet zone defaults to 2 modules: the standard asks for 4, but 2 is what terminal
-- tools use to keep the code small and phones scan it fine; pass `quiet = 4` to be strict.

local core = require "pairstore.core"
local compat = require "pairstore.compat"

local qr = {}

qr.DEFAULT_QUIET = 2

local function argerror(fn, msg)
  error("pairstore.qr." .. fn .. ": " .. msg, 3)
end

-- libqrencode's encoder, or nil, message, "unsupported" in a build without it (make QR=0).
local function qr_matrix(text)
  if not core.qr_matrix then
    return nil, "this pairstore was built without QR codes (make QR=0)", "unsupported"
  end
  return core.qr_matrix(text)
end

--- The module matrix of text: { width = n, version = v, rows = { "0101...", ... } }, "1" for
-- a dark module | nil, message, "qr" (or "unsupported": built without QR codes)
function qr.matrix(text)
  if type(text) ~= "string" then argerror("matrix", "text must be a string, got " .. type(text)) end
  return qr_matrix(text)
end

-- A predicate over (x, y) in the padded grid: is the module there dark? Outside the symbol
-- (the quiet zone) it is light.
local function dark_at(m, quiet)
  local rows, w = m.rows, m.width
  return function(x, y)
    local mx, my = x - quiet, y - quiet
    if mx < 1 or my < 1 or mx > w or my > w then return false end
    return rows[my]:byte(mx) == 49 -- "1"
  end
end

local function render_ascii(m, quiet)
  local dark, size, lines = dark_at(m, quiet), m.width + 2 * quiet, {}
  for y = 1, size do
    local cells = {}
    for x = 1, size do cells[x] = dark(x, y) and "##" or "  " end
    lines[y] = table.concat(cells)
  end
  return table.concat(lines, "\n") .. "\n"
end

local HALF = {
  [0] = " ",       -- neither half painted
  [1] = "\226\150\128", -- ▀ upper half
  [2] = "\226\150\132", -- ▄ lower half
  [3] = "\226\150\136", -- █ both
}

local function render_blocks(m, quiet, invert)
  local dark, size, lines = dark_at(m, quiet), m.width + 2 * quiet, {}
  -- painted(x, y): whether the cell carries ink. Beyond the last row (odd sizes) nothing is
  -- painted, so the terminal background continues there.
  local function painted(x, y)
    if y > size then return false end
    if invert then return dark(x, y) end
    return not dark(x, y)
  end
  for y = 1, size, 2 do
    local cells = {}
    for x = 1, size do
      cells[x] = HALF[(painted(x, y) and 1 or 0) + (painted(x, y + 1) and 2 or 0)]
    end
    lines[#lines + 1] = table.concat(cells)
  end
  return table.concat(lines, "\n") .. "\n"
end

--- Draws text as a QR code: qr.render(text, { ascii = false, quiet = 2, invert = false })
-- --> string (lines ending in "\n") | nil, message, "qr"
function qr.render(text, opts)
  if type(text) ~= "string" then argerror("render", "text must be a string, got " .. type(text)) end
  if opts ~= nil and type(opts) ~= "table" then argerror("render", "options must be a table") end
  opts = opts or {}
  local quiet = opts.quiet == nil and qr.DEFAULT_QUIET or opts.quiet
  if not compat.is_integer(quiet) or quiet < 0 or quiet > 16 then
    argerror("render", "quiet must be an integer in 0..16")
  end
  local m, msg, code = qr_matrix(text)
  if not m then return nil, msg, code end
  if opts.ascii then return render_ascii(m, quiet) end
  return render_blocks(m, quiet, opts.invert and true or false)
end

return qr
