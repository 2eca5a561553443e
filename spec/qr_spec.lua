-- Specs for the QR code of a pairing URL: the libqrencode matrix (pairstore.core.qr_matrix
-- via pairstore.qr.matrix) and the two terminal renderings.
local pairstore = require "pairstore"
local qr = require "pairstore.qr"
local helpers = require "helpers"

-- A pairing URL of the real shape (sid and key from the fixture vectors).
local URL = pairstore.pairing_url("https://pair.example/pair", {
  sid = "00112233445566778899aabbccddeeff",
  pkGatewayB64 = "B6N8vBQgk8i3VdwbEOhstCY3StFqqFPtC9_AsrhtHHw",
})

local FINDER = { "1111111", "1000001", "1011101", "1011101", "1011101", "1000001", "1111111" }

local UPPER, LOWER, FULL = "\226\150\128", "\226\150\132", "\226\150\136"

-- The characters of a UTF-8 line.
local function chars(line)
  local t = {}
  for _, cp in helpers.compat.utf8.codes(line) do t[#t + 1] = helpers.compat.utf8.char(cp) end
  return t
end

local function lines_of(s)
  assert.are.equal("\n", s:sub(-1), "a rendering ends with a newline")
  local t = {}
  for l in s:gmatch("([^\n]*)\n") do t[#t + 1] = l end
  return t
end

describe("pairstore.qr.matrix()", function()
  it("encodes a pairing URL as a square matrix of the version's width", function()
    local m = assert(qr.matrix(URL))
    assert.is_true(m.version >= 1 and m.version <= 40)
    assert.are.equal(17 + 4 * m.version, m.width)
    -- 109 characters at level M: version 6 (41 modules) with libqrencode's mode
    -- optimisation, 7 (45) if a build encodes it all in 8-bit mode.
    assert.are.equal(109, #URL)
    assert.is_truthy(m.width == 41 or m.width == 45)
    assert.are.equal(m.width, #m.rows)
    for _, row in ipairs(m.rows) do
      assert.are.equal(m.width, #row)
      assert.matches("^[01]+$", row)
    end
  end)

  it("gives version 1 (21 modules) for a short text and grows with the text", function()
    local m = assert(qr.matrix("hello"))
    assert.are.equal(1, m.version)
    assert.are.equal(21, m.width)
    local widths, last = {}, 0
    for _, n in ipairs { 10, 40, 100, 300, 1000 } do
      local w = assert(qr.matrix(("x"):rep(n))).width
      assert.is_true(w >= last)
      widths[#widths + 1], last = w, w
    end
    assert.is_true(last > widths[1])
  end)

  it("has the three finder patterns in the corners", function()
    local m = assert(qr.matrix(URL))
    local w = m.width
    for i = 1, 7 do
      assert.are.equal(FINDER[i], m.rows[i]:sub(1, 7))
      assert.are.equal(FINDER[i], m.rows[i]:sub(w - 6, w))
      assert.are.equal(FINDER[i], m.rows[w - 7 + i]:sub(1, 7))
    end
    -- The separators around them are light.
    assert.are.equal("0", m.rows[1]:sub(8, 8))
    assert.are.equal("00000000", m.rows[8]:sub(1, 8))
  end)

  it("is deterministic", function()
    assert.are.same(qr.matrix(URL), qr.matrix(URL))
  end)

  it("returns nil, message, 'qr' for what cannot be encoded", function()
    local m, msg, code = qr.matrix("")
    assert.is_nil(m)
    assert.are.equal("qr: cannot encode an empty text", msg)
    assert.are.equal("qr", code)
    m, msg, code = qr.matrix(("x"):rep(5000))
    assert.is_nil(m)
    assert.are.equal("qr: text too long for a QR code", msg)
    assert.are.equal("qr", code)
  end)

  it("raises for a non-string or a text with NUL bytes", function()
    assert.has_error(function() qr.matrix(nil) end, "pairstore.qr.matrix: text must be a string, got nil")
    assert.has_error(function() qr.matrix(12) end, "pairstore.qr.matrix: text must be a string, got number")
    assert.has_error(function() qr.matrix("a\0b") end)
    assert.has_error(function() require("pairstore.core").qr_matrix() end)
  end)
end)

describe("pairstore.qr.render()", function()
  local m
  setup(function() m = assert(qr.matrix(URL)) end)

  describe("in ASCII", function()
    it("draws one matrix row per line, '##' dark and '  ' light, inside a 2-module quiet zone", function()
      local lines = lines_of(assert(qr.render(URL, { ascii = true })))
      local size = m.width + 4
      assert.are.equal(size, #lines)
      for y, line in ipairs(lines) do
        assert.are.equal(2 * size, #line)
        assert.matches("^[# ]+$", line)
        for x = 1, size do
          local cell = line:sub(2 * x - 1, 2 * x)
          local mx, my = x - 2, y - 2
          local dark = mx >= 1 and my >= 1 and mx <= m.width and my <= m.width and m.rows[my]:sub(mx, mx) == "1"
          assert.are.equal(dark and "##" or "  ", cell)
        end
      end
      assert.are.equal(("  "):rep(size), lines[1])
      assert.are.equal(("  "):rep(size), lines[size])
      assert.are.equal("    ##############", lines[3]:sub(1, 18))
    end)

    it("honours quiet", function()
      for _, q in ipairs { 0, 1, 4 } do
        local lines = lines_of(assert(qr.render(URL, { ascii = true, quiet = q })))
        assert.are.equal(m.width + 2 * q, #lines)
        assert.are.equal(2 * (m.width + 2 * q), #lines[1])
      end
      local lines = lines_of(assert(qr.render(URL, { ascii = true, quiet = 0 })))
      assert.are.equal("##############", lines[1]:sub(1, 14))
    end)
  end)

  describe("with half blocks", function()
    -- Decode a rendering back into painted cells: painted[y][x].
    local function painted_grid(s)
      local grid = {}
      for i, line in ipairs(lines_of(s)) do
        local top, bottom = {}, {}
        for x, ch in ipairs(chars(line)) do
          assert.is_truthy(ch == " " or ch == UPPER or ch == LOWER or ch == FULL, "unexpected character " .. ch)
          top[x] = ch == UPPER or ch == FULL
          bottom[x] = ch == LOWER or ch == FULL
        end
        grid[2 * i - 1], grid[2 * i] = top, bottom
      end
      return grid
    end

    it("draws two matrix rows per line, painting light modules and the quiet zone", function()
      local s = assert(qr.render(URL))
      local lines = lines_of(s)
      local size = m.width + 4
      assert.are.equal(math.floor((size + 1) / 2), #lines)
      for _, line in ipairs(lines) do assert.are.equal(size, helpers.compat.utf8.len(line)) end
      assert.are.equal(FULL:rep(size), lines[1]) -- two quiet rows
      local grid = painted_grid(s)
      for y = 1, size do
        for x = 1, size do
          local mx, my = x - 2, y - 2
          local dark = mx >= 1 and my >= 1 and mx <= m.width and my <= m.width and m.rows[my]:sub(mx, mx) == "1"
          assert.are.equal(not dark, grid[y][x], ("cell %d,%d"):format(x, y))
        end
      end
      -- An odd number of rows: the last line's lower half is left to the background.
      for x = 1, size do assert.is_false(grid[size + 1][x]) end
    end)

    it("paints the dark modules instead with invert = true", function()
      local s = assert(qr.render(URL, { invert = true }))
      local size = m.width + 4
      local lines = lines_of(s)
      assert.are.equal((" "):rep(size), lines[1])
      local grid = painted_grid(s)
      for y = 1, size do
        for x = 1, size do
          local mx, my = x - 2, y - 2
          local dark = mx >= 1 and my >= 1 and mx <= m.width and my <= m.width and m.rows[my]:sub(mx, mx) == "1"
          assert.are.equal(dark, grid[y][x])
        end
      end
    end)

    it("has ceil((width + 2 * quiet) / 2) lines for any quiet zone", function()
      for _, q in ipairs { 0, 1, 2, 3, 4 } do
        local size = m.width + 2 * q
        local lines = lines_of(assert(qr.render(URL, { quiet = q })))
        assert.are.equal(math.floor((size + 1) / 2), #lines)
        assert.are.equal(size, helpers.compat.utf8.len(lines[1]))
      end
      local small = lines_of(assert(qr.render("hello", { quiet = 4 })))
      assert.are.equal(15, #small) -- 21 + 8 = 29 rows
    end)
  end)

  it("returns nil, message, 'qr' when the text cannot be encoded", function()
    local s, msg, code = qr.render("")
    assert.is_nil(s)
    assert.are.equal("qr: cannot encode an empty text", msg)
    assert.are.equal("qr", code)
  end)

  it("raises on bad arguments", function()
    assert.has_error(function() qr.render(nil) end, "pairstore.qr.render: text must be a string, got nil")
    assert.has_error(function() qr.render(URL, "ascii") end, "pairstore.qr.render: options must be a table")
    for _, q in ipairs { -1, 1.5, "2", 17 } do
      assert.has_error(function() qr.render(URL, { quiet = q }) end, "pairstore.qr.render: quiet must be an integer in 0..16")
    end
  end)
end)
