-- peers.lua: the wrk script of bench/peers.sh, for every target.
--
--   wrk -t2 -c64 -d8s --latency -s bench/peers.lua URL -- ARGS
--
-- ARGS are name=value:
--   api=kv      GET URL<key>; POST URL<key> (our /db/ and lua_shared_dict's)
--   api=webdis  GET URL GET/<key>.bin; PUT URL SET/<key> (Redis via webdis)
--   api=fixed   GET URL itself (nginx's return 200 and static files)
--   op=get      GET a random key of [0, keys), or always key=NAME
--   op=set      write a vsize-byte value to a random key of [0, keys)
--   op=mix      getpct% of op=get, the rest op=set, over [0, keys)
--   op=fill     write the keys [0, keys) in turn, shared out among the
--               threads, and start again at the end, until the caller
--               stops wrk once the target counts them all.  Cycling keeps
--               wrk's script check, which sends thread 0's first request
--               to nobody, from leaving a key out
--   key=NAME    op=get: this key only (the 1 MiB value)
--   keys=N      the key space                          (100000)
--   vsize=N     value bytes                            (100)
--   getpct=N    op=mix: the share of GETs in percent   (90)
--   nthreads=N  the -t given to wrk                    (2)
--
-- Keys are "k" and 7 digits.  Requests are two halves made once around
-- the key, so wrk, which shares the CPUs with the server, spends the same
-- little on every target.  done() prints one line for peers.sh:
--   peers-result requests= duration_us= p50_us= p90_us= p99_us= errors=

local cfg = { api = "kv", op = "get", key = "", keys = 100000, vsize = 100,
              getpct = 90, nthreads = 2 }

local n = 0

function setup(thread)
  thread:set("tid", n)
  n = n + 1
end

local get_head, get_tail, set_head, set_tail, fixed
local names = {}
local nexti

local function around(req, hole)
  local s, e = req:find(hole, 1, true)
  return req:sub(1, s - 1), req:sub(e + 1)
end

function init(args)
  local hole = "\1\1\1\1\1\1\1\1"
  local base, value, body_headers

  for _, a in ipairs(args) do
    local k, v = a:match("^([%w_]+)=(.*)$")
    if k then cfg[k] = tonumber(v) or v end
  end

  base = wrk.path
  value = string.rep("x", cfg.vsize)
  body_headers = { ["Content-Type"] = "application/octet-stream" }

  if cfg.api == "kv" then
    get_head, get_tail = around(wrk.format("GET", base .. hole), hole)
    set_head, set_tail = around(wrk.format("POST", base .. hole,
                                           body_headers, value), hole)
  elseif cfg.api == "webdis" then
    get_head, get_tail = around(wrk.format("GET", base .. "GET/" .. hole
                                           .. ".bin"), hole)
    set_head, set_tail = around(wrk.format("PUT", base .. "SET/" .. hole,
                                           body_headers, value), hole)
  elseif cfg.api == "fixed" then
    fixed = wrk.format("GET", base)
  else
    error("peers.lua: unknown api=" .. tostring(cfg.api))
  end

  if cfg.key ~= "" then
    fixed = get_head .. cfg.key .. get_tail
  end

  nexti = tid or 0
  math.randomseed((tid or 0) * 7919 + os.time())
end

local function name(i)
  local s = names[i]
  if not s then
    s = string.format("k%07d", i)
    names[i] = s
  end
  return s
end

function request()
  if fixed then
    return fixed
  end

  local op = cfg.op

  if op == "mix" then
    op = math.random(1, 100) <= cfg.getpct and "get" or "set"
  end

  if op == "get" then
    return get_head .. name(math.random(0, cfg.keys - 1)) .. get_tail
  end

  if op == "set" then
    return set_head .. string.format("k%07d", math.random(0, cfg.keys - 1))
           .. set_tail
  end

  local i = nexti
  nexti = nexti + cfg.nthreads
  if nexti >= cfg.keys then
    nexti = tid or 0
  end
  return set_head .. name(i) .. set_tail
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("peers-result requests=%d duration_us=%d "
                         .. "p50_us=%d p90_us=%d p99_us=%d errors=%d\n",
                         summary.requests, summary.duration,
                         latency:percentile(50), latency:percentile(90),
                         latency:percentile(99),
                         e.connect + e.read + e.write + e.status
                         + e.timeout))
end
