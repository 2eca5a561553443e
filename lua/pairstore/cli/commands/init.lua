--- pairstore.cli.commands: the registry of the CLI's commands, in the order --help lists
-- them. Each is a module pairstore.cli.commands.NAME returning a table:
--   summary          one line for --help
--   epilog           (optional) the command's --help text
--   define(cmd)      (optional) adds its arguments and options to the argparse command
--   check(ctx, args) (optional) checks arguments before any store is opened (raise with ctx:die)
--   store            false when the command opens no store of --store/--file (default: opens it)
--   run(ctx, args, store) -> exit code
--   broken_pipe      (optional) what a closed pipe on stdout means: an exit code (default 0:
--                    the reader had what it wanted), or "error"
-- A new command is a new file and a new name here.
local M = {}

M.NAMES = { "list", "show", "reject", "prune", "create", "watch", "corrupt", "schema", "migrate", "stats" }

function M.get(name)
  return require("pairstore.cli.commands." .. name)
end

return M
