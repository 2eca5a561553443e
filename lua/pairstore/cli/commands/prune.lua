--- pairstore prune: overdue sessions expire, ended ones past retention go.
local function run(ctx, _, store)
  local n, msg, code = store:prune()
  if not n then ctx:failed("cannot prune", msg, code) end
  ctx.w:out(string.format("pruned %d session%s\n", n, n == 1 and "" or "s"))
  return 0
end

return {
  summary = "Expire overdue sessions and delete ended ones past retention.",
  run = run,
}
