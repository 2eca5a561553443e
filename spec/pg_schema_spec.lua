-- The shipped schema file is the DDL the PostgreSQL engine runs on first use, byte for byte.
local helpers = require "helpers"
local pairstore = require "pairstore"

describe("sql/pairstore.sql", function()
  it("is exactly the schema the engine creates", function()
    local shipped = helpers.read(helpers.ROOT .. "/sql/pairstore.sql")
    assert.is_string(shipped)
    assert.are.equal(pairstore.pg_schema_sql(), shipped)
  end)

  it("names every table and index the engine's statements use", function()
    local ddl = pairstore.pg_schema_sql()
    for _, name in ipairs { "pairstore_schema", "pairstore_stores", "pairstore_sessions",
                            "pairstore_sessions_prune", "pairstore_sessions_created" } do
      assert.truthy(ddl:find(name, 1, true), name)
    end
    assert.truthy(ddl:find("\n  body       text NOT NULL,\n", 1, true)) -- text, kept verbatim (not jsonb)
  end)
end)
