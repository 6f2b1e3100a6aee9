-- locate(keys=[namespace], args=[event_id, ...]) -> {1 or 0, ...}: is each event's message still in Redis
-- where a worker will get it? See shared/locator.py. Reads Dramatiq's keys (dispatch.lua, Dramatiq 2.2.1).
local namespace = KEYS[1]
local locators = namespace .. ":__locators__"
local workers = redis.call("zrange", namespace .. ":__heartbeats__", 0, -1)

local function held(queue_name, message_id)
    for _, worker in ipairs(workers) do
        if redis.call("sismember", namespace .. ":__acks__." .. worker .. "." .. queue_name, message_id) == 1 then
            return true
        end
    end
    return false
end

local function present(queue_name, message_id)
    local canonical = queue_name
    if string.sub(queue_name, -3) == ".DQ" then
        canonical = string.sub(queue_name, 1, -4)
    end
    local xq = namespace .. ":" .. canonical .. ".XQ"
    if redis.call("zscore", xq, message_id) and redis.call("hexists", xq .. ".msgs", message_id) == 1 then
        return true
    end
    local queue = namespace .. ":" .. queue_name
    if redis.call("hexists", queue .. ".msgs", message_id) == 0 then
        return false
    end
    return redis.call("exists", queue) == 1 or held(queue_name, message_id)
end

local found = {}
for i = 1, #ARGV do
    local value = redis.call("hget", locators, ARGV[i])
    found[i] = 0
    if value then
        local space = string.find(value, " ", 1, true)
        if space and present(string.sub(value, 1, space - 1), string.sub(value, space + 1)) then
            found[i] = 1
        end
    end
end
return found
