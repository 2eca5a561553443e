std = "lua54"
max_line_length = false
files["spec/**/*.lua"] = { std = "+busted" }
exclude_files = { "build*/**" }
