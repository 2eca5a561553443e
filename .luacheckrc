std = "lua54"
max_line_length = false
files["spec/**/*.lua"] = { std = "+busted" }
exclude_files = { "build*/**" }
-- run inside nginx (ngx_http_lua on LuaJIT): ngx, ffi, bit
files["examples/nginx/**/*.lua"] = { std = "luajit+ngx_lua" }
