-- The broker's Redis scripts (shared/broker.py): each runs atomically, on this project's own keys only.
-- A queue is a stream; each entry has the fields i (message id), m (the encoded Dramatiq message) and, in
-- the dead-letter stream, q (the queue it died on). The locators hash maps a message id to
-- "<stream key> <entry id>": where that message is now.

-- !publish KEYS: locators, stream per message; ARGV: message id, data per message -> entry ids
local ids = {}
for n = 1, #ARGV / 2 do
    local stream = KEYS[n + 1]
    local id = redis.call("XADD", stream, "*", "i", ARGV[2 * n - 1], "m", ARGV[2 * n])
    redis.call("HSET", KEYS[1], ARGV[2 * n - 1], stream .. " " .. id)
    ids[n] = id
end
return ids

-- !ack KEYS: stream, locators; ARGV: group, entry id, message id
-- The locator goes only if it still points here: a retry enqueued before this ack has written its own.
redis.pcall("XACK", KEYS[1], ARGV[1], ARGV[2])
redis.call("XDEL", KEYS[1], ARGV[2])
if redis.call("HGET", KEYS[2], ARGV[3]) == KEYS[1] .. " " .. ARGV[2] then
    redis.call("HDEL", KEYS[2], ARGV[3])
end
return 1

-- !move KEYS: from stream, to stream, locators; ARGV: group ("" for none), entry id, data ("" keeps the
-- entry's own), then field/value pairs to add -> the new entry id, or false if the entry is gone
local found = redis.call("XRANGE", KEYS[1], ARGV[2], ARGV[2])
if #found == 0 then
    if ARGV[1] ~= "" then redis.pcall("XACK", KEYS[1], ARGV[1], ARGV[2]) end
    return false
end
local fields = found[1][2]
local message_id, data
for n = 1, #fields, 2 do
    if fields[n] == "i" then message_id = fields[n + 1] end
    if fields[n] == "m" then data = fields[n + 1] end
end
if ARGV[3] ~= "" then data = ARGV[3] end
local added = {"XADD", KEYS[2], "*", "i", message_id, "m", data}
for n = 4, #ARGV do table.insert(added, ARGV[n]) end
local id = redis.call(unpack(added))
if ARGV[1] ~= "" then redis.pcall("XACK", KEYS[1], ARGV[1], ARGV[2]) end
redis.call("XDEL", KEYS[1], ARGV[2])
redis.call("HSET", KEYS[3], message_id, KEYS[2] .. " " .. id)
return id

-- !hand_back KEYS: stream, locators; ARGV: group, consumer -> how many entries went back
-- Every entry the consumer was delivered and never acknowledged goes back to the stream's end, as a new
-- entry any consumer reads; then the consumer leaves the group.
local moved = 0
local ok, pending = pcall(redis.call, "XPENDING", KEYS[1], ARGV[1], "-", "+", 1000, ARGV[2])
while ok and #pending > 0 do
    for _, entry in ipairs(pending) do
        local old = entry[1]
        local found = redis.call("XRANGE", KEYS[1], old, old)
        if #found > 0 then
            local fields = found[1][2]
            local added = {"XADD", KEYS[1], "*"}
            local message_id
            for n = 1, #fields, 2 do
                table.insert(added, fields[n])
                table.insert(added, fields[n + 1])
                if fields[n] == "i" then message_id = fields[n + 1] end
            end
            local id = redis.call(unpack(added))
            if message_id and redis.call("HGET", KEYS[2], message_id) == KEYS[1] .. " " .. old then
                redis.call("HSET", KEYS[2], message_id, KEYS[1] .. " " .. id)
            end
            moved = moved + 1
        end
        redis.call("XACK", KEYS[1], ARGV[1], old)
        redis.call("XDEL", KEYS[1], old)
    end
    pending = redis.call("XPENDING", KEYS[1], ARGV[1], "-", "+", 1000, ARGV[2])
end
if ok then redis.call("XGROUP", "DELCONSUMER", KEYS[1], ARGV[1], ARGV[2]) end
return moved

-- !locate KEYS: locators; ARGV: message ids -> 1 where the message is still an entry of its stream
local found = {}
for n = 1, #ARGV do
    found[n] = 0
    local where = redis.call("HGET", KEYS[1], ARGV[n])
    if where then
        local space = string.find(where, " ", 1, true)
        local stream, id = string.sub(where, 1, space - 1), string.sub(where, space + 1)
        if #redis.call("XRANGE", stream, id, id) > 0 then found[n] = 1 end
    end
end
return found

-- !purge KEYS: stream, locators; ARGV: first entry id to keep, most entries to remove -> how many went
local gone = redis.call("XRANGE", KEYS[1], "-", "(" .. ARGV[1], "COUNT", ARGV[2])
for _, entry in ipairs(gone) do
    local fields = entry[2]
    for n = 1, #fields, 2 do
        if fields[n] == "i" and redis.call("HGET", KEYS[2], fields[n + 1]) == KEYS[1] .. " " .. entry[1] then
            redis.call("HDEL", KEYS[2], fields[n + 1])
        end
    end
    redis.call("XDEL", KEYS[1], entry[1])
end
return #gone

-- !discard KEYS: dead stream, locators; ARGV: entry id -> 1 if it was removed, 0 if it was gone already
-- An operator's "drop it": the entry goes, and its locator if it still points at it.
local found = redis.call("XRANGE", KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then return 0 end
local fields = found[1][2]
for n = 1, #fields, 2 do
    if fields[n] == "i" and redis.call("HGET", KEYS[2], fields[n + 1]) == KEYS[1] .. " " .. ARGV[1] then
        redis.call("HDEL", KEYS[2], fields[n + 1])
    end
end
redis.call("XDEL", KEYS[1], ARGV[1])
return 1
