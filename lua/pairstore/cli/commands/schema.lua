--- pairstore schema: the PostgreSQL schema's DDL; touches no store.
local pairstore = require "pairstore"

return {
  summary = "Print the PostgreSQL schema's DDL (what sql/pairstore.sql holds).",
  epilog = "For a database where the application role may not create tables: run it once as the\n"
    .. "tables' owner (pairstore schema | psql -d DB), then grant the role SELECT, INSERT, UPDATE,\n"
    .. "DELETE on pairstore_schema, pairstore_stores and pairstore_sessions. A role that may create\n"
    .. "them does so on first use.",
  store = false,
  run = function(ctx)
    ctx.w:out(pairstore.pg_schema_sql())
    return 0
  end,
}
