-- get.lua: the wrk script of bench/shards.sh's reads.
--
--   wrk -t2 -c64 -d10s -s bench/get.lua http://127.0.0.1:PORT/db/ -- ARGS
--
-- GETs a random key of [from, from + keys), named as kv.lua names them
-- ("k" and the key's number, zero-padded to klen bytes).  ARGS: keys=N
-- (1000000), klen=N (8), from=N (0).  wrk counts answers other than 2xx
-- and 3xx ("Non-2xx").

local cfg = { keys = 1000000, klen = 8, from = 0 }
local keyfmt

function init(args)
  for _, a in ipairs(args) do
    local k, v = a:match("^([%w_]+)=(.*)$")
    if k then cfg[k] = tonumber(v) or v end
  end

  keyfmt = wrk.path .. "k%0" .. (cfg.klen - 1) .. "d"
  math.randomseed(os.time() + (wrk.thread and 1 or 0))
end

function request()
  return wrk.format("GET", string.format(keyfmt,
                                         cfg.from
                                         + math.random(0, cfg.keys - 1)))
end
