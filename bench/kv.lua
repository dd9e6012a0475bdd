-- kv.lua: the wrk script of the benchmarks (bench/README.md).
--
--   wrk -t2 -c64 -d10s -s bench/kv.lua http://127.0.0.1:PORT/db/ -- ARGS
--
-- ARGS are name=value:
--   op=set     POST a vsize-byte value to a random key of [0, keys),
--              until wrk's duration ends (the durable SET workload)
--   op=post    POST each selected key once, then GET /readyz until the
--   op=delete  caller stops wrk (it watches the puts and deletes counters
--              of /kv/status); the threads share the keys out.  wrk
--              calls thread 0's request() once to validate the script
--              and drops that request, so each thread sends its first
--              key twice: the server answers nthreads - 1 more requests
--              than there are keys
--   keys=N     the key space                                (1000000)
--   klen=N     key bytes: "k" and the key's number, zero-padded (8)
--   vsize=N    value bytes                                  (100)
--   fill=C     the byte the value is made of                (x)
--   skip=K     post/delete: leave out every key i with i % K == 0, so that
--              1/K of the keys stay as they are (0: take every key) (0)
--   nthreads=N the -t given to wrk                          (2)

local cfg = { op = "set", keys = 1000000, klen = 8, vsize = 100, fill = "x",
              skip = 0, nthreads = 2 }

local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end

local value, idle, total, nexti, step, keyfmt
local first = true

function init(args)
  for _, a in ipairs(args) do
    local k, v = a:match("^([%w_]+)=(.*)$")
    if k then cfg[k] = tonumber(v) or v end
  end

  value = string.rep(cfg.fill, cfg.vsize)
  keyfmt = "k%0" .. (cfg.klen - 1) .. "d"
  idle = wrk.format("GET", "/readyz")

  -- selected keys are numbered 0 .. total - 1; this thread takes
  -- tid, tid + nthreads, ...
  total = cfg.keys
  if cfg.skip > 0 then
    total = cfg.keys - math.floor((cfg.keys + cfg.skip - 1) / cfg.skip)
  end
  nexti = tid or 0
  step = cfg.nthreads

  math.randomseed((tid or 0) * 7919 + os.time())
end

-- the j-th selected key: with skip=K, the j-th i with i % K ~= 0
local function selected(j)
  if cfg.skip > 0 then
    local per = cfg.skip - 1
    return math.floor(j / per) * cfg.skip + j % per + 1
  end
  return j
end

local function key(i)
  return string.format(keyfmt, i)
end

local post_headers = { ["Content-Type"] = "application/octet-stream" }

local function post(k)
  return wrk.format("POST", wrk.path .. k, post_headers, value)
end

-- op=set builds each request from halves made once around a placeholder
-- key, so that the client spends little CPU per request: wrk shares the
-- two cores with nginx
local set_head, set_tail

local function set_request()
  if not set_head then
    local ph = string.rep("\1", cfg.klen)
    local t = post(ph)
    local s, e = t:find(ph, 1, true)
    set_head, set_tail = t:sub(1, s - 1), t:sub(e + 1)
  end
  return set_head .. key(math.random(0, cfg.keys - 1)) .. set_tail
end

function request()
  if cfg.op == "set" then
    return set_request()
  end

  if nexti >= total then
    return idle
  end

  local i = selected(nexti)
  if first then
    first = false
  else
    nexti = nexti + step
  end

  if cfg.op == "delete" then
    return wrk.format("DELETE", wrk.path .. key(i))
  end
  return post(key(i))
end
