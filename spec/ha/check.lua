--- spec/ha/check.lua — the checks of `make test-ha` (spec/ha/run.sh).
--
--   check.lua WORK CLIENTS TARGET PGDIR CLIENTS_OK [CONSUMED]
--
-- Reads every client's log (WORK/logs/N, see client.lua) and what the promoted server holds:
-- the rows of pairstore_sessions read with psql (not through the engine under test), and
-- list_all through pairstore on TARGET as a cross-check of the engine's own reads. Prints one
-- line per check and "N passed, N failed".
--
-- Also the checks of make test-nginx's failover (spec/nginx/failover.lua), whose clients
-- speak HTTP: there a create that failed may not have told its sid (logged with sid "-": at
-- most the ones with outcome_unknown may be on the server, unseen), and a consume (a
-- response) leaves a status in CONSUMED (a comma-separated list; default "consumed").
local pairstore = require "pairstore"
local cjson = require "cjson"

local work, nclients, target, pgdir, clients_ok = arg[1], tonumber(arg[2]), arg[3], arg[4], arg[5] == "1"
local fmt = string.format
local CONSUMED = {}
for st in (arg[6] or "consumed"):gmatch("[^,]+") do CONSUMED[st] = true end

local passed, failed = 0, 0
local function check(name, ok, detail)
  if ok then
    passed = passed + 1
    print("ok   " .. name .. (detail and detail ~= "" and " (" .. detail .. ")" or ""))
  else
    failed = failed + 1
    print("FAIL " .. name .. (detail and detail ~= "" and ": " .. detail or ""))
  end
end

local function sh_quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- ---- the logs ---------------------------------------------------------------------------------

local S = {}         -- per sid: what the clients were told
local events = {}    -- every line, parsed
local per_client = {}
local blind = { unknown = 0, err = 0 } -- creates that failed without telling their sid
local function sess(sid)
  local s = S[sid]
  if not s then
    s = { create_ok = 0, create_err = 0, create_unknown = 0, wrong_ack = 0, wrong_unknown = 0,
          right_ok = 0, right_unknown = 0, consume_ok = 0, consume_unknown = 0, resolves = {} }
    S[sid] = s
  end
  return s
end

for i = 1, nclients do
  local c = { pre = 0, switch = 0, post = 0, lines = 0 }
  per_client[i] = c
  local f = io.open(work .. "/logs/" .. i, "rb")
  if f then
    for line in f:lines() do
      local ph, op, sid, res, code, detail = line:match("^(%S+)\t(%S+)\t(%S+)\t(%S+)\t(%S+)\t(.*)$")
      if ph and sid == "-" and op == "create" and res == "err" then
        c.lines = c.lines + 1
        events[#events + 1] = { client = i, phase = ph, op = op, sid = sid, ok = false, code = code, detail = detail }
        if code == "outcome_unknown" then blind.unknown = blind.unknown + 1 else blind.err = blind.err + 1 end
      elseif not ph or not sid:match("^%x+$") then
        events[#events + 1] = { client = i, bad = line }
      else
        c.lines = c.lines + 1
        local e = { client = i, phase = ph, op = op, sid = sid, ok = res == "ok", code = code, detail = detail }
        events[#events + 1] = e
        if e.ok and op ~= "resolve" then c[ph] = c[ph] + 1 end
        local s = sess(sid)
        if op == "create" then
          if e.ok then
            s.create_ok = s.create_ok + 1
            s.code, s.pk = detail:match("^code=(%d+) pk=(%S+)$")
          elseif code == "outcome_unknown" then s.create_unknown = s.create_unknown + 1
          else s.create_err = s.create_err + 1 end
        elseif op == "verify_wrong" then
          if code == "wrong_code" then s.wrong_ack = s.wrong_ack + 1
          elseif code == "outcome_unknown" then s.wrong_unknown = s.wrong_unknown + 1 end
        elseif op == "verify_right" then
          if e.ok then s.right_ok = s.right_ok + 1
          elseif code == "outcome_unknown" then s.right_unknown = s.right_unknown + 1 end
        elseif op == "consume" or op == "consume_other" then
          if e.ok then s.consume_ok = s.consume_ok + 1
          elseif code == "outcome_unknown" then s.consume_unknown = s.consume_unknown + 1 end
        elseif op == "resolve" and e.ok then
          s.resolves[#s.resolves + 1] = code -- a status, or not_found
        end
      end
    end
    f:close()
  end
end

-- ---- the promoted server ----------------------------------------------------------------------

local server, server_err = {}, nil
do
  local cmd = fmt("bash spec/support/pgcluster.sh psql %s -c %s 2>&1", sh_quote(pgdir),
    sh_quote("SELECT sid || chr(9) || status || chr(9) || body FROM pairstore_sessions WHERE store = 'default'"))
  local p = assert(io.popen(cmd))
  for line in p:lines() do
    local sid, status, body = line:match("^(%x+)\t(%S+)\t(.*)$")
    if sid then
      -- status from its column (pruning may mark a row expired without rewriting its body)
      local ok, doc = pcall(cjson.decode, body)
      server[sid] = ok and doc or { unreadable = body }
      server[sid].status = status
    else
      server_err = (server_err or "") .. line .. " "
    end
  end
  if not p:close() then server_err = server_err or "psql failed" end
end
local nserver = 0
for _ in pairs(server) do nserver = nserver + 1 end

-- ---- checks -----------------------------------------------------------------------------------

check("the clients ran and stopped cleanly", clients_ok)
check("the promoted server answers (pairstore_sessions read with psql)", server_err == nil and nserver > 0,
  server_err or fmt("%d sessions", nserver))

do
  local bad = {}
  for i, c in ipairs(per_client) do
    if c.pre == 0 or c.post == 0 then bad[#bad + 1] = fmt("client %d: %d before, %d after", i, c.pre, c.post) end
  end
  local tot = { pre = 0, switch = 0, post = 0 }
  for _, c in ipairs(per_client) do for k in pairs(tot) do tot[k] = tot[k] + c[k] end end
  check("every client had acknowledged operations before the kill and after the promotion", #bad == 0,
    #bad > 0 and table.concat(bad, "; ") or
    fmt("%d acknowledged before the kill, %d during the switch, %d after", tot.pre, tot.switch, tot.post))
end

-- Answers: outside the switch only the domain outcomes the flow produces; during it also
-- unavailable and outcome_unknown.
do
  local DOMAIN = {
    create = {}, verify_wrong = { wrong_code = true, already_consumed = true },
    verify_right = { already_consumed = true }, consume = { already_consumed = true },
    consume_other = { already_consumed = true }, resolve = {},
  }
  local bad, counts = {}, {}
  for _, e in ipairs(events) do
    if e.bad then
      bad[#bad + 1] = "unparsable log line: " .. e.bad
    elseif not e.ok then
      local allowed = DOMAIN[e.op] and DOMAIN[e.op][e.code]
        or (e.phase == "switch" and (e.code == "unavailable" or e.code == "outcome_unknown"))
      if not allowed then
        bad[#bad + 1] = fmt("client %d %s %s %s: %s", e.client, e.phase, e.op, e.sid:sub(1, 8), e.code)
      elseif not DOMAIN[e.op][e.code] then
        local k = e.op .. " " .. e.code
        counts[k] = (counts[k] or 0) + 1
      end
    end
  end
  local seen = {}
  for k, n in pairs(counts) do seen[#seen + 1] = fmt("%s ×%d", k, n) end
  table.sort(seen)
  check("errors only during the switch, and only unavailable or outcome_unknown", #bad == 0,
    #bad > 0 and table.concat(bad, "; ", 1, math.min(#bad, 8)) .. (#bad > 8 and fmt(" (+%d more)", #bad - 8) or "")
    or (#seen > 0 and "during the switch: " .. table.concat(seen, ", ") or "none during the switch"))
end

do -- created sessions
  local missing, present, wrongval, unresolved, nacked, nerr, nunknown = {}, {}, {}, {}, 0, 0, 0
  for sid, s in pairs(S) do
    local row = server[sid]
    if s.create_ok > 0 then
      nacked = nacked + 1
      if not row then missing[#missing + 1] = sid:sub(1, 8)
      elseif row.secondaryCode ~= s.code or row.pkGatewayB64 ~= s.pk then wrongval[#wrongval + 1] = sid:sub(1, 8) end
    elseif s.create_unknown > 0 then
      nunknown = nunknown + 1
      local r = s.resolves[1]
      if r == nil then unresolved[#unresolved + 1] = sid:sub(1, 8)
      elseif (r == "not_found") ~= (row == nil) then
        unresolved[#unresolved + 1] = fmt("%s read back as %s, server %s", sid:sub(1, 8), r, row and "has it" or "has not")
      end
    elseif s.create_err > 0 then
      nerr = nerr + 1
      if row then present[#present + 1] = sid:sub(1, 8) end
    end
  end
  check("every acknowledged create is on the promoted server, with its code and key", #missing == 0 and #wrongval == 0,
    #missing + #wrongval > 0 and fmt("missing %s; different %s", table.concat(missing, ","), table.concat(wrongval, ","))
    or fmt("%d creates", nacked))
  check("no create that returned an error is on the server", #present == 0,
    #present > 0 and table.concat(present, ",") or fmt("%d failed creates", nerr))
  check("every create with outcome_unknown was read back, and the server agrees", #unresolved == 0,
    #unresolved > 0 and table.concat(unresolved, "; ") or fmt("%d unknown", nunknown))
  local phantom = {}
  for sid in pairs(server) do if not S[sid] then phantom[#phantom + 1] = sid:sub(1, 8) end end
  if blind.unknown + blind.err == 0 then
    check("no session on the server that no client created", #phantom == 0, table.concat(phantom, ","))
  else
    check(fmt("no session on the server that no client created, but at most the %d creates with "
      .. "outcome_unknown that did not tell their sid", blind.unknown), #phantom <= blind.unknown,
      fmt("%d such sessions (%s); %d other creates failed without a sid", #phantom, table.concat(phantom, ","), blind.err))
  end
end

do -- consumes, code checks, final states
  local twice, lost, half, attempts, nconsumed, unknown_applied, unknown_not = {}, {}, {}, {}, 0, 0, 0
  for sid, s in pairs(S) do
    local row = server[sid]
    if s.consume_ok > 1 then twice[#twice + 1] = fmt("%s ×%d", sid:sub(1, 8), s.consume_ok) end
    local acked_any = s.create_ok + s.wrong_ack + s.right_ok + s.consume_ok > 0
    if row then
      local st = row.status
      if s.consume_ok >= 1 then
        nconsumed = nconsumed + 1
        if not CONSUMED[st] then lost[#lost + 1] = fmt("%s consume acknowledged, status %s", sid:sub(1, 8), tostring(st)) end
      elseif CONSUMED[st] then
        if s.consume_unknown == 0 then half[#half + 1] = fmt("%s consumed, but no consume succeeded", sid:sub(1, 8))
        else unknown_applied = unknown_applied + 1 end
      else
        if s.consume_unknown > 0 then unknown_not = unknown_not + 1 end
        if s.right_ok > 0 and st ~= "device_connected" then
          lost[#lost + 1] = fmt("%s code check acknowledged, status %s", sid:sub(1, 8), tostring(st))
        elseif s.right_ok == 0 and s.right_unknown == 0 and st ~= "awaiting_scan" then
          half[#half + 1] = fmt("%s status %s, but no code check succeeded", sid:sub(1, 8), tostring(st))
        end
      end
      local a = row.secondaryCodeAttempts
      if type(a) ~= "number" or a < s.wrong_ack or a > s.wrong_ack + s.wrong_unknown then
        attempts[#attempts + 1] = fmt("%s attempts %s, acknowledged %d (+%d unknown)", sid:sub(1, 8), tostring(a),
          s.wrong_ack, s.wrong_unknown)
      end
    elseif acked_any then
      lost[#lost + 1] = fmt("%s acknowledged operations, not on the server", sid:sub(1, 8))
    end
  end
  check("no session consumed twice (at most one consume success per sid, across clients)", #twice == 0,
    #twice > 0 and table.concat(twice, "; ") or fmt("%d sessions consumed once", nconsumed))
  check("every acknowledged code check and consume is on the promoted server", #lost == 0,
    table.concat(lost, "; ", 1, math.min(#lost, 8)))
  check("nothing that returned an error is half-applied (status)", #half == 0, table.concat(half, "; ", 1, math.min(#half, 8)))
  check("wrong-code attempts: exactly the acknowledged ones (plus at most the unknown ones)", #attempts == 0,
    table.concat(attempts, "; ", 1, math.min(#attempts, 8)))

  -- Each outcome_unknown of a code check or consume was read back; what the read said still holds.
  local unresolved, n = {}, 0
  for _, e in ipairs(events) do
    if not e.bad and e.code == "outcome_unknown" and e.op ~= "resolve" and e.op ~= "create" then
      n = n + 1
      local s = S[e.sid]
      local row = server[e.sid]
      if #s.resolves == 0 then unresolved[#unresolved + 1] = e.sid:sub(1, 8) .. " never read back"
      elseif row and CONSUMED[s.resolves[#s.resolves]] and not CONSUMED[row.status] then
        unresolved[#unresolved + 1] = e.sid:sub(1, 8) .. " read back consumed, not on the server"
      end
    end
  end
  check("every other outcome_unknown was resolved by reading the session", #unresolved == 0,
    #unresolved > 0 and table.concat(unresolved, "; ") or
    fmt("%d unknown; unknown consumes: %d found applied, %d not", n, unknown_applied, unknown_not))
end

do -- the engine's own reads on the promoted server agree with the rows
  local store = pairstore.open(target, { max_sessions = 100000 })
  local all, err = store:list_all()
  local diff = {}
  if all then
    local seen = {}
    for _, s in ipairs(all) do
      seen[s.sid] = true
      local row = server[s.sid]
      if not row or row.status ~= s.status or row.secondaryCodeAttempts ~= s.secondaryCodeAttempts then
        diff[#diff + 1] = s.sid:sub(1, 8)
      end
    end
    for sid in pairs(server) do if not seen[sid] then diff[#diff + 1] = sid:sub(1, 8) .. " not listed" end end
  end
  check("list_all through pairstore on the promoted server agrees with the rows", all ~= nil and #diff == 0,
    all and table.concat(diff, ",", 1, math.min(#diff, 8)) or tostring(err))
  store:close()
end

print(fmt("%d passed, %d failed", passed, failed))
os.exit(failed == 0 and 0 or 1)
