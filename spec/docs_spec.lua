-- The docs cannot rot: every fenced block of README.md, CONTRIBUTING.md and docs/*.md is run
-- or checked according to its info string, and a block of any other kind (no info string
-- included) fails. The kinds, and what is done with each (CONTRIBUTING.md, "The docs are
-- tested", says the same for writers):
--   lua              run to completion by the runtime under test, in a child process
--   sh               commands: `pairstore ...` and `psql ...` run for real, `make T` checked
--                    with `make -n T`, `apt-get install P...` against the packages .ci/deps
--                    installs, `luarocks ...` against the rockspec; `export` as written;
--                    any other command fails the block
--   console          a transcript: each `$ ` command runs for real against a temp sessions
--                    file; it must exit 0 (or print the status its `; echo $?` shows) and
--                    print the transcript's first line of output
--   nginx            a whole nginx.conf: `nginx -t`
--   sql              run on the PostgreSQL database of the file's blocks
--   postgresql-conf  every setting named exists (pg_settings)
--   pg-target        each line is a target pairstore.open takes as PostgreSQL, and parses
--   yaml prometheus, yaml prometheus-rules   promtool check config / check rules
--   syntax, lua-fragment   signatures: every store:m, pairstore.f and crypto.f named exists
--   text             output, listings: not run
-- Blocks run in document order, one temp directory and (when a block needs one) one fresh
-- database of the test cluster per file. Before a block runs, what names a real machine is
-- replaced: /tmp/ by the temp directory, /var/lib/gateway by a directory in it, the example
-- PostgreSQL targets by the file's database (see SUBST below).
local helpers = require "helpers"
local pairstore = require "pairstore"
local q = helpers.sh_quote

local ROOT = helpers.ROOT

local function doc_files()
  local files = { "README.md", "CONTRIBUTING.md" }
  local names = helpers.ls(ROOT .. "/docs")
  table.sort(names)
  for _, n in ipairs(names) do
    if n:match("%.md$") then files[#files + 1] = "docs/" .. n end
  end
  return files
end

--- The fenced blocks of a Markdown text: { info =, body =, line = } in order.
local function fenced_blocks(text)
  local out, open = {}, nil
  local n = 0
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    if open then
      local fence = line:match("^ ? ? ?(" .. open.char .. "+)%s*$")
      if fence and #fence >= open.len then
        open.body = table.concat(open.lines, "\n") .. (#open.lines > 0 and "\n" or "")
        open.lines, open.char, open.len = nil, nil, nil
        out[#out + 1] = open
        open = nil
      else
        open.lines[#open.lines + 1] = line
      end
    else
      local fence, info = line:match("^ ? ? ?(```+)(.*)$")
      if not fence then fence, info = line:match("^ ? ? ?(~~~+)(.*)$") end
      if fence then
        open = { info = info:match("^%s*(.-)%s*$"), line = n, lines = {}, char = fence:sub(1, 1), len = #fence }
      end
    end
  end
  assert(open == nil, "a fence opened and never closed")
  return out
end

local function plain(s) return (s:gsub("[%p]", "%%%0")) end
local function repl(s) return (s:gsub("%%", "%%%%")) end

-- Per-file context: a temp directory, and the file's database once a block needs one.
local function new_ctx(file)
  local tmp = helpers.tmpdir()
  assert(os.execute("mkdir -p " .. q(tmp .. "/home") .. " " .. q(tmp .. "/var/lib")))
  return { file = file, tmp = tmp }
end

local PG_ROLES = "DO $$ BEGIN CREATE ROLE owner LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$; " ..
  "DO $$ BEGIN CREATE ROLE gateway LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;"

local created_dbs = {}

--- The file's database (made on first use, owned by the role `owner`; the roles `owner` and
-- `gateway` the docs name exist); fails the block without the test cluster.
local function pg(ctx)
  if ctx.db then return ctx end
  helpers.pg_target()
  ctx.pgdir = helpers.pg_dir()
  local ok, out = helpers.psql(PG_ROLES)
  assert(ok, out)
  ctx.db = ("docs_%s"):format(helpers.store_name():gsub("[^%w]", "_"))
  ok, out = helpers.psql(("CREATE DATABASE %s OWNER owner"):format(ctx.db))
  assert(ok, out)
  created_dbs[#created_dbs + 1] = ctx.db
  ctx.target = ("postgresql:///%s?host=%s&user=pairstore"):format(ctx.db, ctx.pgdir)
  return ctx
end

local function drop_dbs()
  for i = #created_dbs, 1, -1 do
    helpers.psql(("DROP DATABASE IF EXISTS %s WITH (FORCE)"):format(created_dbs[i]))
    created_dbs[i] = nil
  end
end

-- What names a real machine in the docs, and what stands for it when a block runs.
local SUBST = {
  { "/tmp/", function(ctx) return ctx.tmp .. "/" end },
  { "/var/lib/gateway", function(ctx) return ctx.tmp .. "/var/lib/gateway" end },
  { "postgresql://gateway@db1,db2/pairstore?", function(ctx) return pg(ctx).target .. "&" end },
  { "postgresql://gateway@db1,db2/pairstore", function(ctx) return pg(ctx).target end },
  { "pg:host=/run/postgresql dbname=pairstore", function(ctx)
    pg(ctx)
    return ("pg:host=%s dbname=%s user=pairstore"):format(ctx.pgdir, ctx.db)
  end },
  { "psql -d pairstore", function(ctx) return "psql -d " .. pg(ctx).db end },
}

local function substitute(ctx, text)
  for _, s in ipairs(SUBST) do
    if text:find(s[1], 1, true) then text = text:gsub(plain(s[1]), repl(s[2](ctx))) end
  end
  return text
end

-- Shell ------------------------------------------------------------------------------------

--- Every package name .ci/deps may install (its lists, extras included).
local function deps_packages()
  local src = assert(helpers.read(ROOT .. "/.ci/deps"))
  local set = {}
  for list in src:gmatch("[%w_]+%+?=%(([^)]*)%)") do
    for w in list:gmatch("%S+") do
      if w:match("^[%w][%w.+-]*$") then set[w] = true end
    end
  end
  return set
end

--- The block's logical lines (continuations joined), comments removed.
local function sh_lines(body)
  local out = {}
  for line in body:gsub("\\\n", " "):gmatch("[^\n]+") do
    local code, quote = {}, nil
    for i = 1, #line do
      local c = line:sub(i, i)
      if quote then
        if c == quote then quote = nil end
      elseif c == "'" or c == '"' then
        quote = c
      elseif c == "#" and (i == 1 or line:sub(i - 1, i - 1):match("%s")) then
        break
      end
      code[#code + 1] = c
    end
    local l = table.concat(code):match("^%s*(.-)%s*$")
    if l ~= "" then out[#out + 1] = l end
  end
  return out
end

local SH_COMMANDS = { make = true, ["apt-get"] = true, pairstore = true, psql = true, export = true,
  luarocks = true, echo = true }

--- The commands of a logical line (split on | && || ;), each one's first word.
local function first_words(line)
  local words = {}
  local unquoted = line:gsub("'[^']*'", "''"):gsub('"[^"]*"', '""')
  for part in (unquoted .. ";"):gmatch("(.-)[|;&]+") do
    local cmd = part:gsub("^%s*", ""):gsub("^[%w_]+=%S*%s+", "")
    local w = cmd:match("^(%S+)")
    if w then words[#words + 1] = w end
  end
  return words
end

--- The shell that runs a block: make, apt-get and luarocks check instead of acting;
-- pairstore is the tree's, under the runtime under test; psql reaches the test cluster.
local function sh_prelude(ctx)
  local deps = {}
  for p in pairs(deps_packages()) do deps[#deps + 1] = p end
  table.sort(deps)
  return table.concat({
    "set -eo pipefail",
    "unset MAKEFLAGS MAKELEVEL MFLAGS LUA PAIRSTORE_STORE PAIRSTORE_STORE_NAME PAIRSTORE_FILE PAIRSTORE_URL PAIRSTORE_DEV",
    "export HOME=" .. q(ctx.tmp .. "/home"),
    "cd " .. q(ROOT),
    "DEPS=" .. q(" " .. table.concat(deps, " ") .. " "),
    -- (the tools that are not pairstore run without the sanitizer a test run may preload)
    [[make() { LD_PRELOAD= command make -n "$@" >/dev/null || { echo "docs: make -n $* failed" >&2; return 1; }; }]],
    [[apt-get() {
  [ "$1" = install ] || { echo "docs: apt-get $1: only install lines are checked" >&2; return 1; }
  shift
  for p in "$@"; do
    case $p in -*) continue ;; esac
    case $DEPS in *" $p "*) ;; *) echo "docs: apt-get install $p: not a package .ci/deps installs" >&2; return 1 ;; esac
  done
}]],
    [[luarocks() {
  case " $* " in *" make "*) ;; *) echo "docs: luarocks $*: only luarocks make is checked" >&2; return 1 ;; esac
  set -- *.rockspec
  [ $# -eq 1 ] && [ -f "$1" ] || { echo "docs: luarocks make: not one rockspec in the tree" >&2; return 1; }
  ]] .. helpers.LUA .. [[ -e "assert(loadfile('$1'))(); assert(type(build) == 'table' and build.modules)" >/dev/null
}]],
    "pairstore() { " .. helpers.LUA_ENV .. " timeout 60 " .. helpers.LUA .. " " .. q(ROOT .. "/bin/pairstore") .. ' "$@"; }',
    ctx.pgdir and ("psql() { LD_PRELOAD= PGHOST=%s PGUSER=pairstore command psql -X -q -v ON_ERROR_STOP=1 \"$@\"; }"):format(q(ctx.pgdir))
      or [[psql() { echo "docs: psql without the test cluster" >&2; return 1; }]],
  }, "\n") .. "\n"
end

local function run_sh(ctx, block)
  for _, line in ipairs(sh_lines(block.body)) do
    for _, w in ipairs(first_words(line)) do
      assert(SH_COMMANDS[w], ("%s:%d: `%s`: the docs spec does not know how to run %q"):format(
        ctx.file, block.line, line, w))
    end
  end
  local body = substitute(ctx, block.body)
  if body:match("%f[%w]psql%f[%W]") then pg(ctx) end
  local script = helpers.scratch_file("block.sh")
  helpers.write(script, sh_prelude(ctx) .. body)
  local ok, out = helpers.run("timeout 300 bash " .. q(script))
  assert(ok, ("%s:%d: the block failed:\n%s\n%s"):format(ctx.file, block.line, body, out))
  return out
end

-- Console transcripts -----------------------------------------------------------------------

local function unhex(s) return (s:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end)) end

local function run_console(ctx, block)
  local body = substitute(ctx, block.body)
  local steps = {}
  for line in (body .. "\n"):gmatch("([^\n]*)\n") do
    local cmd = line:match("^%$ (.*)$")
    if cmd then
      steps[#steps + 1] = { cmd = cmd, out = {} }
    elseif #steps > 0 then
      table.insert(steps[#steps].out, line)
    end
  end
  assert(#steps > 0, ("%s:%d: a console block without a `$ ` command"):format(ctx.file, block.line))
  local file = ctx.tmp .. "/var/lib/gateway/pair-sessions.json"
  -- The sessions the transcript names by a prefix are there before it runs, with its sids.
  local seeded = {}
  for sid in body:gmatch("%f[%x](%x+)%f[%X]") do
    if #sid == 32 and not seeded[sid] then
      for _, st in ipairs(steps) do
        if st.cmd:find(sid:sub(1, 8), 1, true) then seeded[sid] = true end
      end
    end
  end
  for sid in pairs(seeded) do
    local store = pairstore.open(file, { durable = false, rng = { sid = function() return unhex(sid) end } })
    local s = store:get(sid) or assert(store:create { operator = { channel = "telegram" } })
    store:close()
    assert.are.equal(sid, s.sid)
  end
  local prelude = sh_prelude(ctx):gsub("set %-eo pipefail\n", "") .. "export PAIRSTORE_FILE=" .. q(file) .. "\n"
  for _, st in ipairs(steps) do
    assert(SH_COMMANDS[first_words(st.cmd)[1]], ("%s:%d: `$ %s`: not a command the docs spec runs"):format(
      ctx.file, block.line, st.cmd))
    local script = helpers.scratch_file("console.sh")
    helpers.write(script, prelude .. st.cmd .. "\n")
    local ok, out = helpers.run("timeout 120 bash " .. q(script))
    local got = {}
    for l in (out .. "\n"):gmatch("([^\n]*)\n") do got[#got + 1] = l end
    while got[#got] == "" do got[#got] = nil end
    local want = st.out
    while want[#want] == "" do want[#want] = nil end
    local where = ("%s:%d: `$ %s`"):format(ctx.file, block.line, st.cmd)
    if st.cmd:match(";%s*echo %$%?$") then
      assert.are.equal(want[#want], got[#got], where .. ": exit status\n" .. out)
    else
      assert(ok, where .. " failed:\n" .. out)
    end
    if want[1] then assert.are.equal(want[1], got[1], where .. ": first line of output\n" .. out) end
  end
end

-- A check whose tool is missing here fails: `make test` installs nginx's Lua module and
-- promtool (.ci/deps), so a missing one is a broken machine, not a block to pass over.
local function need(ctx, block, ok, why)
  assert(ok, ("%s:%d: cannot be checked here: %s"):format(ctx.file, block.line, why))
end

-- The other kinds ---------------------------------------------------------------------------

local function run_lua(ctx, block)
  local code = substitute(ctx, block.body)
  local ok, out = helpers.run_lua(code)
  assert(ok, ("%s:%d: the Lua block failed:\n%s\n%s"):format(ctx.file, block.line, code, out))
  return out
end

local function run_nginx(ctx, block)
  need(ctx, block, helpers.have("nginx") and helpers.exists("/usr/lib/nginx/modules/ngx_http_lua_module.so"),
    "nginx -t needs nginx and libnginx-mod-http-lua (apt-get install nginx libnginx-mod-http-lua)")
  local prefix = ctx.tmp .. "/nginx/"
  assert(os.execute("mkdir -p " .. q(prefix .. "logs")))
  helpers.write(prefix .. "nginx.conf", substitute(ctx, block.body))
  local ok, out = helpers.run(("env -u LD_PRELOAD nginx -t -q -p %s -c %s -e stderr -g %s"):format(q(prefix), q(prefix .. "nginx.conf"),
    q("pid " .. prefix .. "nginx.pid;")))
  assert(ok, ("%s:%d: nginx -t:\n%s"):format(ctx.file, block.line, out))
end

local function run_sql(ctx, block)
  pg(ctx)
  local f = helpers.scratch_file("block.sql")
  helpers.write(f, block.body)
  local ok, out = helpers.run(("env -u LD_PRELOAD psql -X -q -v ON_ERROR_STOP=1 -h %s -U pairstore -d %s -f %s"):format(
    q(ctx.pgdir), ctx.db, q(f)))
  assert(ok, ("%s:%d: the SQL failed:\n%s"):format(ctx.file, block.line, out))
end

local function check_pg_conf(ctx, block)
  local names = {}
  for _, line in ipairs(sh_lines(block.body)) do
    local name = line:match("^([%w_]+)%s*=")
    assert(name, ("%s:%d: not a setting: %s"):format(ctx.file, block.line, line))
    names[#names + 1] = name
  end
  assert(#names > 0)
  helpers.pg_target()
  local list = {}
  for i, n in ipairs(names) do list[i] = helpers.sql_literal(n) end
  local ok, out = helpers.psql("SELECT count(*) FROM pg_settings WHERE name IN (" .. table.concat(list, ",") .. ")")
  assert(ok, out)
  assert.are.equal(#names, tonumber(out:match("%d+")), ctx.file .. ": unknown setting among " .. table.concat(names, ", "))
end

local function check_pg_targets(ctx, block)
  local n = 0
  for t in block.body:gmatch("[^\n]+") do
    n = n + 1
    assert.is_true(pairstore.is_pg_target(t), ctx.file .. ": not a PostgreSQL target: " .. t)
    local shown, why = pairstore.display_target(t)
    assert(shown, ctx.file .. ": " .. t .. ": " .. tostring(why))
  end
  assert(n > 0)
end

local function promtool(what)
  return function(ctx, block)
    need(ctx, block, helpers.have("promtool"), "promtool check " .. what .. " needs promtool (apt-get install prometheus)")
    local f = helpers.scratch_file("prometheus.yml")
    helpers.write(f, block.body)
    local ok, out = helpers.run(("env -u LD_PRELOAD promtool check %s %s"):format(what, q(f)))
    assert(ok, ("%s:%d: promtool check %s:\n%s"):format(ctx.file, block.line, what, out))
  end
end

--- Every store:m, pairstore.f and crypto.f a signature names exists.
local function check_names(ctx, block)
  local store = pairstore.open(ctx.tmp .. "/names/pair-sessions.json", { durable = false })
  local modules = { pairstore = pairstore, crypto = require "pairstore.crypto" }
  local n = 0
  local body = block.body:gsub('"[^"\n]*"', '""')
  for name in body:gmatch("store:([%a_][%w_]*)") do
    n = n + 1
    assert.is_function(store[name], ("%s:%d: store:%s is not a method"):format(ctx.file, block.line, name))
  end
  for mod, name in body:gmatch("%f[%w](%a+)%.([%a_][%w_]*)") do
    if modules[mod] then
      n = n + 1
      assert.is_function(modules[mod][name], ("%s:%d: %s.%s is not a function"):format(ctx.file, block.line, mod, name))
    end
  end
  store:close()
  assert(n > 0, ("%s:%d: a signature block that names nothing"):format(ctx.file, block.line))
end

local function nothing(ctx, block)
  assert(block.body:match("%S"), ("%s:%d: an empty block"):format(ctx.file, block.line))
end

local KINDS = {
  lua = run_lua,
  sh = run_sh,
  console = run_console,
  nginx = run_nginx,
  sql = run_sql,
  ["postgresql-conf"] = check_pg_conf,
  ["pg-target"] = check_pg_targets,
  ["yaml prometheus"] = promtool("config"),
  ["yaml prometheus-rules"] = promtool("rules"),
  syntax = check_names,
  ["lua-fragment"] = check_names,
  text = nothing,
}

-- The specs ---------------------------------------------------------------------------------

local counts = {}

describe("the docs' code blocks", function()
  after_each(helpers.cleanup)
  teardown(function()
    drop_dbs()
    local kinds = {}
    for k, n in pairs(counts) do kinds[#kinds + 1] = ("%s %d"):format(k, n) end
    table.sort(kinds)
    io.stderr:write("docs_spec: blocks run or checked: ", table.concat(kinds, ", "), "\n")
  end)

  it("finds the block parser exact: fences, info strings, longer fences, tildes", function()
    local b = fenced_blocks("x\n```lua\na\n```\n````text\n```\n````\n~~~ sh\nb\n~~~\n```\n```\n")
    assert.are.same({ "lua", "text", "sh", "" }, { b[1].info, b[2].info, b[3].info, b[4].info })
    assert.are.same({ "a\n", "```\n", "b\n", "" }, { b[1].body, b[2].body, b[3].body, b[4].body })
    assert.are.same({ 2, 5, 8, 11 }, { b[1].line, b[2].line, b[3].line, b[4].line })
    assert.are.same({ "make", "pairstore", "psql" }, first_words("make test && pairstore schema | psql -d x"))
    assert.are.same({ "pairstore" }, first_words("FOO=1 pairstore list # x"))
    assert.are.same({ "make a", "pairstore 'x # y'" }, sh_lines("make a # b\n# c\npairstore 'x # y'\n"))
  end)

  it("has the documents the README links to, each with blocks of known kinds only", function()
    local readme = assert(helpers.read(ROOT .. "/README.md"))
    for link in readme:gmatch("%]%(([%w/_.-]+%.md)[#)]") do
      assert.is_true(helpers.exists(ROOT .. "/" .. link), "README links to a missing " .. link)
    end
    local unknown = {}
    for _, file in ipairs(doc_files()) do
      for _, b in ipairs(fenced_blocks(assert(helpers.read(ROOT .. "/" .. file)))) do
        if not KINDS[b.info] then unknown[#unknown + 1] = ("%s:%d: ```%s"):format(file, b.line, b.info) end
      end
    end
    assert.are.same({}, unknown)
  end)

  it("has no link to a doc or an anchor that is not there", function()
    local anchors = {}
    local function slug(h)
      return (h:lower():gsub("[^%w%s_-]", ""):gsub("%s", "-"))
    end
    for _, file in ipairs(doc_files()) do
      local set, infence = {}, false
      for line in (assert(helpers.read(ROOT .. "/" .. file)) .. "\n"):gmatch("([^\n]*)\n") do
        if line:match("^```") then infence = not infence end
        local h = not infence and line:match("^#+%s+(.-)%s*$")
        if h then set[slug(h)] = true end
      end
      anchors[file] = set
    end
    local bad = {}
    for _, file in ipairs(doc_files()) do
      local dir = file:match("^(.*)/") or ""
      local text = assert(helpers.read(ROOT .. "/" .. file))
      for target in text:gmatch("%]%(([^)%s]+)%)") do
        if not target:match("^%a+:") then
          local path, anchor = target:match("^([^#]*)#?(.*)$")
          local resolved = path == "" and file or ((dir ~= "" and dir .. "/" or "") .. path):gsub("[^/]+/%.%./", "")
          if not helpers.exists(ROOT .. "/" .. resolved) then
            bad[#bad + 1] = file .. ": " .. target
          elseif anchor ~= "" and not (anchors[resolved] or {})[anchor] then
            bad[#bad + 1] = file .. ": " .. target .. " (no such heading)"
          end
        end
      end
    end
    assert.are.same({}, bad)
  end)

  for _, file in ipairs(doc_files()) do
    it(file .. ": every block runs or checks out", function()
      local ctx = new_ctx(file)
      local blocks = fenced_blocks(assert(helpers.read(ROOT .. "/" .. file)))
      for _, b in ipairs(blocks) do
        local kind = KINDS[b.info]
        assert(kind, ("%s:%d: unknown block kind ```%s (see spec/docs_spec.lua)"):format(file, b.line, b.info))
        kind(ctx, b)
        counts[b.info] = (counts[b.info] or 0) + 1
      end
    end)
  end
end)
