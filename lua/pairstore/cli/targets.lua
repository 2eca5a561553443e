--- pairstore.cli.targets: which store a command works on (--store, --file, the environment,
-- the default file), opening it, and the session a SID prefix names.
local pairstore = require "pairstore"

local M = {}

--- The store's target: --store or --file, else $PAIRSTORE_STORE, else $PAIRSTORE_FILE, else
-- ~/.pairstore/pair-sessions.json. Whether it names a file or a PostgreSQL database is
-- pairstore.open's to say (store:backend()), not the CLI's.
function M.store_target(ctx, args)
  if args.store then return args.store end
  if args.file then return args.file end
  for _, name in ipairs { "PAIRSTORE_STORE", "PAIRSTORE_FILE" } do
    local env = ctx.getenv(name)
    if env and env ~= "" then return env end
  end
  local home = ctx.getenv("HOME")
  if not home or home == "" then ctx:die("HOME is not set: use --store TARGET or $PAIRSTORE_STORE") end
  return home .. "/.pairstore/pair-sessions.json"
end

-- What the store did on its own (a corrupt file moved aside, a dead holder's lock taken
-- over), told on stderr; never secrets.
local function event_handler(ctx)
  return function(name, info)
    if name == "corrupt" then
      ctx.w:warn("pairstore: note: the sessions file was corrupt; moved aside to ", tostring(info.path),
        " (it holds secrets: see `pairstore corrupt`)")
    elseif name == "invalid_dropped" then
      ctx.w:warn("pairstore: note: ", tostring(info.count), " invalid session entries ignored")
    elseif name == "lock_broken" then
      ctx.w:warn("pairstore: note: ", tostring(info.message))
    end
  end
end

--- Opens target (nothing is read or connected yet). name: the `store` option, which only a
-- PostgreSQL target takes; name_where: what the operator gave it as (for the message);
-- label: what the target is to the command ("FROM", "TO"), named in its errors.
function M.open_target(ctx, target, name, name_where, label)
  ctx.w:note_secrets(target)
  local on_event = event_handler(ctx)
  local prefix = label and (label .. ": ") or ""
  local ok, store = pcall(pairstore.open, target, { on_event = on_event })
  if not ok then ctx:die(prefix .. tostring(store)) end
  if name ~= nil then
    if store:backend() ~= "postgresql" then
      store:close()
      ctx:die(string.format("%s is for a PostgreSQL store; %s is a file", name_where, store.path))
    end
    store:close()
    ok, store = pcall(pairstore.open, target, { on_event = on_event, store = name })
    if not ok then ctx:die(prefix .. tostring(store)) end
  end
  ctx.opened[#ctx.opened + 1] = store
  return store
end

--- The store of --store/--file/the environment, with --store-name or $PAIRSTORE_STORE_NAME.
function M.open_store(ctx, args)
  local name = args.store_name
  if name == nil then
    local env = ctx.getenv("PAIRSTORE_STORE_NAME")
    if env and env ~= "" then
      -- (a name in the environment is for PostgreSQL targets; a file has none)
      local probe = M.open_target(ctx, M.store_target(ctx, args))
      if probe:backend() ~= "postgresql" then return probe end
      probe:close()
      name = env
    end
  end
  return M.open_target(ctx, M.store_target(ctx, args), name, "--store-name")
end

--- The full sid for a unique prefix of one.
function M.resolve(ctx, store, prefix)
  if not prefix:match("^[0-9a-f]+$") or #prefix > 32 then
    ctx:die("invalid SID \"" .. prefix .. "\": expected lowercase hex (a sid or a prefix of one)")
  end
  local all, msg, code = store:list_all()
  if not all then ctx:failed("cannot read the sessions", msg, code) end
  local found = {}
  for _, s in ipairs(all) do
    if s.sid:sub(1, #prefix) == prefix then found[#found + 1] = s.sid end
  end
  if #found == 0 then ctx:die("no session matches " .. prefix) end
  if #found > 1 then
    ctx:die(string.format("%s is ambiguous: it matches %d sessions (%s)", prefix, #found, table.concat(found, ", ")))
  end
  return found[1]
end

return M
