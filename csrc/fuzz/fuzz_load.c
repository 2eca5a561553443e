/*
 * fuzz_load.c — libFuzzer target over pairstore's load-and-validate path. Each input becomes
 * the sessions file; a Lua state (pairstore.core compiled into this binary, lua/ and the system
 * cjson via require) then lists, gets, creates, updates and consumes. It must never crash
 * (ASan, UBSan), hang (-timeout), raise from the public API (runtime failures are returns), or
 * put the canary secret key or code into a message or an event.
 * A test binary may link liblua; the module itself never does.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

int luaopen_pairstore_core(lua_State *L);
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static lua_State *L;
static char dir[256], path[320];

/* The per-input check, in Lua: returns nothing when all is well, else a reason. */
static const char check_src[] =
  "local pairstore = require 'pairstore'\n"
  "local KEY = 'pairstore-CANARY-secret-key-0042'\n"
  "local B64 = 'cGFpcnN0b3JlLUNBTkFSWS1zZWNyZXQta2V5LTAwNDI'\n"
  "local CODE = '424242'\n"
  "local selftest = os.getenv('PAIRSTORE_FUZZ_SELFTEST')\n"
  "return function(path)\n"
  "  local seen = {}\n"
  "  local function note(v) seen[#seen + 1] = tostring(v) end\n"
  "  local store = pairstore.open(path, {\n"
  "    durable = false, lock_wait_ms = 200, now = function() return 1764300000000 end,\n"
  "    rng = { secret_key = function() return KEY end, code = function() return CODE end },\n"
  "    on_event = function(name, info) note(name) for _, v in pairs(info) do note(v) end end,\n"
  "  })\n"
  "  local function call(ok, a, b, c)\n"
  "    if not ok then error('raised: ' .. tostring(a), 0) end\n"
  "    if a == nil then note(b) note(c) end\n"
  "    return a\n"
  "  end\n"
  "  local list = call(pcall(store.list_all, store))\n"
  "  local sid = type(list) == 'table' and list[1] and list[1].sid\n"
  "  if type(sid) ~= 'string' or not sid:match('^' .. string.rep('[0-9a-f]', 32) .. '$') then sid = string.rep('0', 32) end\n"
  "  call(pcall(store.get, store, sid))\n"
  "  call(pcall(store.update, store, sid, function(s) s.secondaryCodeAttempts = s.secondaryCodeAttempts + 1 end))\n"
  "  call(pcall(store.verify_code, store, sid, '000000'))\n"
  "  call(pcall(store.consume, store, sid))\n"
  "  local made = call(pcall(store.create, store, { operator = { channel = 'fuzz' } }))\n"
  "  if made then call(pcall(store.get, store, made.sid)) end\n"
  "  call(pcall(store.prune, store))\n"
  "  store:close()\n"
  "  if selftest then local f = io.open(path .. '.selftest') if f then note(f:read('a')) f:close() end end\n"
  "  for _, m in ipairs(seen) do\n"
  "    if m:find(B64, 1, true) or m:find(B64:sub(1, 20), 1, true) or m:find(KEY, 1, true) or m:find(CODE, 1, true) then\n"
  "      return 'canary in a message or event: ' .. m:sub(1, 200)\n"
  "    end\n"
  "  end\n"
  "end\n";

static void clean_dir(void)
{
  DIR *d = opendir(dir);
  struct dirent *e;
  if (!d) return;
  while ((e = readdir(d)) != NULL) {
    char p[600];
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    unlink(p);
  }
  closedir(d);
}

static void remove_dir(void)
{
  clean_dir();
  rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
  const char *root = getenv("PAIRSTORE_ROOT");
  const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
  (void)argc;
  (void)argv;
  snprintf(dir, sizeof dir, "%s/pairstore-fuzz.XXXXXX", base);
  if (!mkdtemp(dir)) { perror("mkdtemp"); exit(1); }
  snprintf(path, sizeof path, "%s/pair-sessions.json", dir);
  atexit(remove_dir);

  L = luaL_newstate();
  luaL_openlibs(L);
  luaL_requiref(L, "pairstore.core", luaopen_pairstore_core, 0);
  lua_pop(L, 1);
  lua_getglobal(L, "package");
  lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua;", root ? root : ".", root ? root : ".");
  lua_getfield(L, -2, "path");
  lua_concat(L, 2);
  lua_setfield(L, -2, "path");
  lua_pop(L, 1);
  if (luaL_loadstring(L, check_src) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
    fprintf(stderr, "fuzz_load: setup failed: %s\n", lua_tostring(L, -1));
    exit(1);
  }
  lua_setfield(L, LUA_REGISTRYINDEX, "pairstore.fuzz.check");
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  int fd;
  clean_dir();
  fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0 || (size && write(fd, data, size) != (ssize_t)size) || close(fd) != 0) {
    perror("fuzz_load: write input");
    abort();
  }
  if (getenv("PAIRSTORE_FUZZ_SELFTEST")) { /* negative control: leak the input on purpose */
    char p[400];
    snprintf(p, sizeof p, "%s.selftest", path);
    fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd >= 0) { if (write(fd, data, size) < 0) { } close(fd); }
  }
  lua_getfield(L, LUA_REGISTRYINDEX, "pairstore.fuzz.check");
  lua_pushstring(L, path);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    fprintf(stderr, "fuzz_load: the store API raised: %s\n", lua_tostring(L, -1));
    abort();
  }
  if (!lua_isnil(L, -1)) {
    fprintf(stderr, "fuzz_load: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_settop(L, 0);
  lua_gc(L, LUA_GCSTEP, 0);
  return 0;
}
