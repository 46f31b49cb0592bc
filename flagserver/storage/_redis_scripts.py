"""Lua run by `RedisStore` inside its MULTI/EXEC transactions."""

from __future__ import annotations

# Appends one audit entry. It runs inside the MULTI of the write it records, so the
# id is taken in commit order and without gaps: an aborted transaction takes none.
# The entry arrives as JSON without its id ("{...}"); the id is spliced in front.
#
# KEYS[1] audit:seq   KEYS[2] audit (hash)   KEYS[3] audit:key:<target>
# KEYS[4] audit:env:<env> (only when the entry has an environment)
# ARGV[1] the entry's JSON without "id"
APPEND_AUDIT = """
local id = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], id, '{"id":' .. id .. ',' .. string.sub(ARGV[1], 2))
redis.call('ZADD', KEYS[3], id, id)
if #KEYS >= 4 then
  redis.call('ZADD', KEYS[4], id, id)
end
return id
"""
