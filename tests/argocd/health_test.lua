-- Usage: lua5.1 tests/argocd/health_test.lua HEALTH_LUA HEALTH_TEST_YAML
--
-- Runs an Argo CD health check (a health.lua) against the cases of a health_test.yaml in
-- Argo CD's own format (resource_customizations/<group>/<kind>/health_test.yaml: a list
-- `tests` of {healthStatus: {status, message}, inputPath}), the way Argo CD runs it: Lua 5.1
-- semantics (Argo CD uses gopher-lua), the object in the global `obj`, and only the
-- libraries Argo CD opens for health checks (base, table, package, a safe subset of os; no
-- string or math library). Each case must return exactly its status and message. Prints
-- one line per case, then "N passed, M failed"; exits 1 if any failed.
local lyaml = require("lyaml")

local health_path, test_path = arg[1], arg[2]
if not health_path or not test_path then
  io.stderr:write("usage: lua5.1 tests/argocd/health_test.lua HEALTH_LUA HEALTH_TEST_YAML\n")
  os.exit(2)
end

local function read(path)
  local f = assert(io.open(path, "r"))
  local text = f:read("*a")
  f:close()
  return text
end

-- What Argo CD accepts as a status; anything else reads as Unknown ("Lua returned an
-- invalid health status").
local statuses = { Healthy = true, Progressing = true, Degraded = true, Suspended = true,
  Missing = true, Unknown = true }

-- The globals of Argo CD's health VM: OpenBase, OpenTable, OpenPackage and its safe os.
local function sandbox(obj)
  local env = { obj = obj, table = table, os = { time = os.time, date = os.date,
    clock = os.clock, difftime = os.difftime } }
  for _, name in ipairs({ "assert", "error", "ipairs", "next", "pairs", "pcall", "print",
    "rawequal", "rawget", "rawset", "select", "setmetatable", "getmetatable", "tonumber",
    "tostring", "type", "unpack", "xpcall", "require", "_VERSION" }) do
    env[name] = _G[name]
  end
  env._G = env
  return env
end

local dir = test_path:match("^(.*)/[^/]*$") or "."
local cases = lyaml.load(read(test_path)).tests
local passed, failed = 0, 0
for _, case in ipairs(cases) do
  local chunk = assert(loadfile(health_path))
  local obj = lyaml.load(read(dir .. "/" .. case.inputPath))
  setfenv(chunk, sandbox(obj))
  local ok, hs = pcall(chunk)
  local got
  if not ok then
    got = "error: " .. tostring(hs)
  elseif type(hs) ~= "table" then
    got = "returned a " .. type(hs) .. ", not a table"
  elseif not statuses[hs.status] then
    got = "invalid status " .. tostring(hs.status)
  else
    got = hs.status .. ": " .. (hs.message or "")
  end
  local want = case.healthStatus.status .. ": " .. (case.healthStatus.message or "")
  if got == want then
    passed = passed + 1
    print("ok    " .. case.inputPath .. "  " .. got)
  else
    failed = failed + 1
    print("FAIL  " .. case.inputPath .. "\n        want " .. want .. "\n        got  " .. got)
  end
end
print(passed .. " passed, " .. failed .. " failed")
os.exit(failed == 0 and 0 or 1)
