-- wrk script for the retry-guard benchmarks. Parameters come from the environment:
--   RG_METHOD (GET|POST), RG_PATH, RG_BODY (request body, may be empty),
--   RG_UNIQUE=1  -> every request carries a unique Idempotency-Key and a freshly minted JWT
--                   (iat = now, exp = now + 600, unique jti), so each is a first attempt.
--   RG_UNIQUE=shape -> the same headers, of the same lengths, built once and sent every time:
--                   the baseline without a filter sees the bytes a unique request has, without
--                   this script's per-request cost on the load generator's core.
--   RG_JWT          -> (optional) a signed JWT to send in Authorization instead of the minted
--                   one: the jwt_authn configurations' (bench/src/jwt_authn.rs).
-- (Paced, below-saturation runs use oha instead: see bench/src/load.rs.)
-- done() prints one line "RGJSON {...}" with the counts and latency percentiles (microseconds).

local method = os.getenv("RG_METHOD") or "GET"
local path = os.getenv("RG_PATH") or "/"
local body = os.getenv("RG_BODY") or ""
local unique = os.getenv("RG_UNIQUE") == "1"
local shape = os.getenv("RG_UNIQUE") == "shape"
local signed_jwt = os.getenv("RG_JWT") or ""
local fixed = nil

local counter = 0
local thread_tag = "t"
local next_thread = 0

local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local function b64url(data)
  local out = {}
  for i = 1, #data, 3 do
    local a, b, c = data:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local chars = (c and 4) or (b and 3) or 2
    for j = 1, chars do
      local shift = 18 - 6 * (j - 1)
      local idx = math.floor(n / 2 ^ shift) % 64
      out[#out + 1] = b64chars:sub(idx + 1, idx + 1)
    end
  end
  return table.concat(out)
end

local jwt_header = b64url('{"alg":"none","typ":"JWT"}')

-- Runs in the main Lua state once per thread: a distinct tag per thread and per run, so keys
-- are unique across threads and across runs against the same Envoy.
function setup(thread)
  next_thread = next_thread + 1
  thread:set("tag", string.format("%d-%d-%d", os.time(), math.random(1, 2^30), next_thread))
end

function init(args)
  thread_tag = tag or thread_tag
end

function request()
  if fixed then
    return fixed
  end
  local headers = {}
  if body ~= "" then
    headers["Content-Type"] = "application/x-www-form-urlencoded"
  end
  headers["x-client-id"] = "bench-bot"
  if unique or shape then
    -- (A shape request carries a key of a typical length: six digits.)
    counter = shape and 100000 or counter + 1
    local now = os.time()
    local payload = string.format('{"sub":"bench-bot","iat":%d,"exp":%d,"jti":"%s-%d"}', now, now + 600, thread_tag, counter)
    if signed_jwt ~= "" then
      headers["Authorization"] = "Bearer " .. signed_jwt
    else
      headers["Authorization"] = "Bearer " .. jwt_header .. "." .. b64url(payload) .. ".c2ln"
    end
    headers["Idempotency-Key"] = thread_tag .. "-" .. counter
  end
  local req = wrk.format(method, path, headers, body)
  if shape then
    fixed = req
  end
  return req
end

function done(summary, latency, requests)
  io.write(string.format(
    'RGJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f,"non2xx":%d,"socket_errors":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.mean,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
