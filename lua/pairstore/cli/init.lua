--- pairstore.cli: the operator command line (bin/pairstore is its launcher).
--
--   pairstore [--store TARGET [--store-name NAME] | --file PATH] COMMAND ...
--   pairstore list [--all] [--json]
--   pairstore show SID
--   pairstore reject SID
--   pairstore prune
--   pairstore create [--mode generate|import] [--channel NAME] [--ttl SECONDS]
--                    [--url BASE] [--ascii] [--invert] [--wait]
--   pairstore watch SID
--   pairstore corrupt [--remove]
--   pairstore migrate FROM TO [--from-store-name NAME] [--to-store-name NAME]
--   pairstore schema
--   pairstore stats [--json | --prometheus]
--
-- cli.main(arg) is the process's entry (standard descriptors, SIGPIPE, the final close of
-- stdout); cli.run(argv, opts) runs one command line in-process and returns its exit code:
-- opts.stdout, opts.stderr (anything with :write(...) and :flush(), as files have; default
-- io.stdout, io.stderr), opts.getenv (default os.getenv; a table is read as the environment).
--
-- The store: --store or --file, else $PAIRSTORE_STORE, else $PAIRSTORE_FILE, else
-- ~/.pairstore/pair-sessions.json (pairstore.cli.targets). Output never contains a gateway
-- secret key, nor a password given in a target; the 6-digit code is printed only by
-- `create`. Every piece of outside text is printed through pairstore.cli.output.visible.
--
-- Exit codes: 0 success (create --wait / watch: the session completed); 1 the session
-- ended expired or rejected, or vanished (create --wait / watch); 2 an error (bad usage,
-- unknown or ambiguous SID, store failure, including unavailable, timeout and
-- outcome_unknown from PostgreSQL; a migrate conflict; output that could not be written);
-- 130, 143, 129: interrupted by SIGINT (Ctrl+C), SIGTERM or SIGHUP.
local argparse = require "argparse"
local pairstore = require "pairstore"
local core = require "pairstore.core"
local output = require "pairstore.cli.output"
local targets = require "pairstore.cli.targets"
local commands = require "pairstore.cli.commands"
local compat = require "pairstore.compat"

local M = {}

-- What a failed operation left behind, for the codes where the operator must act on it.
local CODE_HINT = {
  unavailable = "the store could not be reached; nothing was changed",
  timeout = "the store did not answer in time (a lock held too long, or a server not answering);"
    .. " nothing was changed",
  outcome_unknown = "the connection was lost during the commit: the change may or may not have been"
    .. " applied; look with `pairstore show` or `pairstore list --all`",
}

-- How a command ends early: raised by ctx:die, caught by M.run.
local Exit = {}

-- The state of one run: the writer, the environment, the stores it opened.
local Ctx = {}
Ctx.__index = Ctx

--- Ends the run with msg on stderr (one line) and exit code `code` (default 2).
function Ctx:die(msg, code)
  self.w.stdout:flush() -- (what was written goes first; its failure is not this message's)
  self.w:warn("pairstore: ", msg)
  self.died = true
  error(setmetatable({ code = code or 2 }, Exit), 0)
end

--- Dies with a store operation's failure: what was tried, the message, the code and a hint.
function Ctx:failed(what, msg, code)
  self:die(string.format("%s: %s%s%s", what, msg or "unknown error",
    (code and code ~= msg) and (" [" .. code .. "]") or "", CODE_HINT[code] and ("; " .. CODE_HINT[code]) or ""))
end

--- A usage error: one line naming the (sub)command, exit code 2.
function Ctx:usage_error(msg, name)
  name = name or "pairstore"
  self.w:warn(string.format("%s: %s (see `%s --help`)", name, tostring(msg):gsub("\n", "; "), name))
  error(setmetatable({ code = 2 }, Exit), 0)
end

--- Whether stdout is a terminal (asked once, before any signal is held: system() ignores
-- SIGINT while its child runs, which would discard one that arrived then).
function Ctx:is_tty()
  if self.tty == nil then
    self.tty = self.w.stdout == io.stdout and compat.execute("test -t 1") == true
  end
  return self.tty
end

local function build_parser(ctx)
  local parser = argparse("pairstore")
    :description("Operator tool for the QR device-pairing session store (pairstore "
      .. pairstore._VERSION .. ").")
    :epilog("The store is --store (or --file), else $PAIRSTORE_STORE, else $PAIRSTORE_FILE, else\n"
      .. "~/.pairstore/pair-sessions.json. TARGET is a file path or a PostgreSQL target:\n"
      .. "postgresql://USER@HOST/DB?OPTIONS or postgres://... (a libpq URI, multi-host and TLS options\n"
      .. "included), or pg:CONNINFO (libpq key=value: pg:'host=/run/pg dbname=pairstore'). --store-name\n"
      .. "names one of several stores in that database (default \"default\"). Every command works the\n"
      .. "same on both; paths and errors never show a password given in the target.\n"
      .. "SID may be any unique prefix of a session id. Run `pairstore COMMAND --help` for details.\n"
      .. "Fields are printed with every byte a terminal could act on as a visible escape (\\e, \\xHH, \\u{HHHH}).\n"
      .. "Environment: PAIRSTORE_STORE (the store's target), PAIRSTORE_FILE (the sessions file, when\n"
      .. "PAIRSTORE_STORE is not set), PAIRSTORE_STORE_NAME (the store name for a PostgreSQL target;\n"
      .. "ignored for a file), PAIRSTORE_URL (create's pairing URL base), PAIRSTORE_DEV=1 (run from a\n"
      .. "source tree: use its lua/ and build/).\n"
      .. "Exit codes: 0 ok; 1 a waited-for session expired, was rejected or vanished; 2 error\n"
      .. "(including a store that is unavailable, a timeout, an outcome_unknown commit, a migrate\n"
      .. "conflict, and output that could not be written); 130, 143, 129 SIGINT (Ctrl+C), SIGTERM, SIGHUP.\n"
      .. "A closed pipe (pairstore list | head) ends a command quietly; create rejects its session.")
    :command_target("command")
    :require_command(true)
  parser:mutex(
    parser:option("--store", "The store: a file path or a PostgreSQL target."):argname("TARGET"),
    parser:option("--file", "The sessions file (a target, as --store)."):argname("PATH")
  )
  parser:option("--store-name", "The store's name in a PostgreSQL database (default \"default\").")
    :argname("NAME")
  local all = { parser }
  for _, name in ipairs(commands.NAMES) do
    local c = commands.get(name)
    local cmd = parser:command(name, c.summary)
    if c.epilog then cmd:epilog(c.epilog) end
    if c.define then c.define(cmd) end
    all[#all + 1] = cmd
  end
  -- --help is output like any other: exit 2 when it cannot be written.
  for _, p in ipairs(all) do
    p:add_help { action = function()
      ctx.w:out(p:get_help(), "\n")
      error(setmetatable({ code = 0 }, Exit), 0)
    end }
  end
  -- Usage errors: one line, exit code 2.
  parser.error = function(p, msg) ctx:usage_error(msg, p:_get_fullname()) end
  return parser
end

local function body(ctx, argv)
  local parser = build_parser(ctx)
  -- A usage error echoes what it did not expect (a target typed where a command goes): every
  -- argument's password, if it is a target with one, is noted before anything is parsed.
  for i = 1, #argv do ctx.w:note_secrets((tostring(argv[i]):gsub("^%-%-[%w-]+=", ""))) end
  ctx.w:note_secrets(ctx.getenv("PAIRSTORE_STORE"))
  ctx.w:note_secrets(ctx.getenv("PAIRSTORE_FILE"))
  local args = parser:parse(argv)
  local command = commands.get(args.command)
  ctx.command = command
  if command.check then command.check(ctx, args) end
  local store
  if command.store ~= false then store = targets.open_store(ctx, args) end
  return command.run(ctx, args, store)
end

-- The exit code once the command returned rc (or ended early with it): the output must have
-- been written, except when its reader went away on purpose (a closed pipe).
local function settle(ctx, rc)
  local ok, err = ctx.w:flush()
  if ok or ctx.died then return rc end -- (a command that died said why)
  local policy = ctx.command and ctx.command.broken_pipe or 0
  if ctx.w:broken_pipe() and policy ~= "error" then
    ctx.quiet = true
    return policy ~= 0 and policy or rc
  end
  ctx.w:warn("pairstore: cannot write the output: ", tostring(err))
  return 2
end

local function run(argv, opts)
  opts = opts or {}
  local getenv = opts.getenv or os.getenv
  if type(getenv) == "table" then
    local env = getenv
    getenv = function(name) return env[name] end
  end
  local ctx = setmetatable({
    w = output.writer(opts.stdout or io.stdout, opts.stderr or io.stderr),
    getenv = getenv, opened = {},
  }, Ctx)
  ctx.w.check_stream = opts.check_stream
  local argcopy = {}
  for i = 1, #argv do argcopy[i] = argv[i] end
  local ok, rc = xpcall(function() return body(ctx, argcopy) end, function(e)
    if getmetatable(e) == Exit then return e end
    return { internal = debug.traceback(tostring(e), 2) }
  end)
  -- the stores it opened are closed, so that a store removes its parked lock sentinel
  for i = #ctx.opened, 1, -1 do pcall(ctx.opened[i].close, ctx.opened[i]) end
  if not ok then
    if rc.internal then
      ctx.w.stdout:flush()
      for line in (rc.internal .. "\n"):gmatch("([^\n]*)\n") do ctx.w:warn("pairstore: internal error: ", line) end
      return 2, ctx
    end
    rc = rc.code
  end
  return settle(ctx, rc), ctx
end

--- Runs one command line (argv: the arguments, as `arg` holds them); returns the exit code.
-- In-process, the signals a command held (create, watch) are let go again afterwards: the
-- caller's process, and every child it starts later, would otherwise inherit them blocked.
function M.run(argv, opts)
  local rc = run(argv, opts)
  core._hold_signals(false)
  return rc
end

-- A closed standard descriptor would be handed to the first file the store opens (output
-- written into the lock sentinel or a temp file): each closed one is filled with /dev/null
-- before anything else; a closed stdout is then an error like any failed write. Returns
-- whether stdout is open.
local std_fillers = {} -- luacheck: ignore 241 (kept open for the life of the process)
local function fill_std_descriptors()
  if select(3, os.rename("/proc/self/fd", "/proc/self/fd")) == 2 then return true end
  local closed, stdout_closed = 0, false
  for fd = 0, 2 do
    if select(3, os.rename("/proc/self/fd/" .. fd, "/proc/self/fd/" .. fd)) == 2 then
      closed = closed + 1
      stdout_closed = stdout_closed or fd == 1
    end
  end
  for i = 1, closed do std_fillers[i] = io.open("/dev/null", "r+") end
  return not stdout_closed
end

--- The process's entry: returns the exit code for os.exit.
function M.main(argv)
  if not fill_std_descriptors() then
    io.stderr:write("pairstore: cannot write the output: stdout is closed\n")
    return 2
  end
  -- A write to a closed pipe fails (and is reported) instead of killing the process silently.
  core._ignore_sigpipe()
  -- Fully buffered whatever stdout is (the commands flush where the operator must see
  -- something): a line-buffered stream reports a write whose flush failed as done.
  io.stdout:setvbuf("full")
  local rc, ctx = run(argv or {}, { check_stream = function()
    if core._stdout_error() then return nil, "an earlier write failed", 5 end
    return true
  end })
  -- The last word on the output: whatever stdio kept to itself, and the close.
  local ok, err = core._close_stdout()
  if not ok and not ctx.quiet and not ctx.w.err then
    io.stderr:write("pairstore: cannot write the output: ", output.visible(err), "\n")
    rc = 2
  end
  return rc
end

return M
