"""The Redis tier's Lua scripts: each check and the write it guards run as
one script, so no other client can write in between.

::

    get (once hashes exist) READ_LUA        a hash? HGETALL, else GET: one round trip either way
    compare_and_set         CAS_LUA         stored version == expected? then SET, SET PX or DEL
    ... with fields         FIELDS_CAS_LUA  stored version == expected? then HSET the changed
                                            fields and the head, HDEL the removed (a delta:
                                            only onto a hash), or replace it all (full)
    quarantine              QUARANTINE_LUA  still the same bad bytes (a hash: the same
                                            head)? copy them aside, DEL
    acquire_lease           ACQUIRE_LUA     lease free? token = INCR fence, SET lease PX ttl
    renew_/release_lease    RENEW_LUA,      lease still holds our token? PEXPIRE it / DEL it
                            RELEASE_LUA
    compare_and_set_fenced  FENCED_CAS_LUA  lease holds our token? then CHECK_VERSION_LUA,
                                            SET or SET PX
    (both, once written)    note_lua        XADD the invalidation to the bus's stream,
                                            when the tier publishes for a bus

An entry's version is read from the envelope bytes in place (see
:mod:`tiercache._envelope`), so the scripts are built from its layout; a
hash (:mod:`tiercache._fields`) keeps the envelope's header in its head
field, the empty name, so its version is read there the same way.
"""

from __future__ import annotations

from .._envelope import MAGIC, MIN_SIZE, VERSION_OFFSET

__all__ = [
    "ACQUIRE_LUA",
    "CAS_LUA",
    "CHECK_VERSION_LUA",
    "FENCED_CAS_LUA",
    "FIELDS_CAS_LUA",
    "QUARANTINE_LUA",
    "READ_LUA",
    "RELEASE_LUA",
    "RENEW_LUA",
    "note_lua",
]

# The version check every write script starts with: sets ``found`` to the
# stored version's 8 raw bytes. They are compared raw rather than through
# ``struct.unpack('<I8', ...)``: Lua numbers are doubles, which cannot tell
# 2**53 from 2**53 + 1, while a byte compare is exact for every u64. Bytes
# that are not an envelope (too short, foreign magic, a version over
# MAX_VERSION: its top bit set) count as absent, version 0, so the cache's
# repair write (expected=0) can replace them, as every other tier does.
CHECK_VERSION_LUA = f"""
local kind = redis.call('TYPE', KEYS[1]).ok
local cur
if kind == 'hash' then
    cur = redis.call('HGET', KEYS[1], '')
else
    cur = redis.call('GET', KEYS[1])
end
local found = string.rep(string.char(0), 8)
if cur and string.len(cur) >= {MIN_SIZE} and string.sub(cur, 1, 2) == '{MAGIC.decode()}'
        and string.byte(cur, {VERSION_OFFSET + 8}) < 128 then
    found = string.sub(cur, {VERSION_OFFSET + 1}, {VERSION_OFFSET + 8})
end
"""


def note_lua(key: int, arg: int) -> str:
    """The invalidation a write script adds once it wrote, when it is given
    the bus's stream as ``KEYS[key]`` (see RedisTier.publish_into): one
    stream entry in the bus's format (tiercache._bus._message), so the
    write and its invalidation happen together, in one round trip.
    ``ARGV[arg..arg+4]``: origin, maxlen, the cache's key, action, version."""
    a = arg
    return f"""
if KEYS[{key}] then
    redis.call('XADD', KEYS[{key}], 'MAXLEN', '~', ARGV[{a + 1}], '*',
        'o', ARGV[{a}], 'k', ARGV[{a + 2}], 'a', ARGV[{a + 3}], 'v', ARGV[{a + 4}])
end
"""


# Compare-and-set as one script, so nothing can write between the read and
# the write. ARGV[3] is the expiry: >0 PX in ms, 0 no expiry, -1 already
# expired (delete). KEYS[2], when given, is the bus's stream (note_lua).
CAS_LUA = (
    CHECK_VERSION_LUA
    + """
if found ~= ARGV[2] then
    return 0
end
local px = tonumber(ARGV[3])
if px < 0 then
    redis.call('DEL', KEYS[1])
elseif px == 0 then
    redis.call('SET', KEYS[1], ARGV[1])
else
    redis.call('SET', KEYS[1], ARGV[1], 'PX', px)
end
"""
    + note_lua(2, 4)
    + """return 1
"""
)

# Quarantine: move unreadable bytes aside only if they are still the value
# (a writer that repaired the key meanwhile wins). ARGV[2]: ms to keep them;
# ARGV[3]: for a hash, the head they were assembled with (its version and
# writer tag: a repair changes it). What is kept aside is the bytes.
QUARANTINE_LUA = """
if redis.call('TYPE', KEYS[1]).ok == 'hash' then
    if (redis.call('HGET', KEYS[1], '') or '') ~= ARGV[3] then return 0 end
elseif redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
local keep = tonumber(ARGV[2])
if keep > 0 then
    redis.call('SET', KEYS[2], ARGV[1], 'PX', keep)
end
redis.call('DEL', KEYS[1])
return 1
"""

# Strict mode. A lease key holds a fencing token drawn from a per-key
# counter; each script checks the token it is given still holds it. The
# counter expires with its lease (no key is left behind per leased
# session); a new one starts from the server clock in microseconds, above
# every token an earlier counter gave, so a token is never handed out twice.
ACQUIRE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local token = redis.call('INCR', KEYS[2])
if token == 1 then
    local t = redis.call('TIME')
    token = tonumber(t[1]) * 1000000 + tonumber(t[2])
    redis.call('SET', KEYS[2], token)
end
redis.call('PEXPIRE', KEYS[2], 2 * tonumber(ARGV[1]) + 60000)
redis.call('SET', KEYS[1], token, 'PX', ARGV[1])
return token
"""
RENEW_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""
FENCED_CAS_LUA = (
    """
if redis.call('GET', KEYS[2]) ~= ARGV[4] then return -1 end
"""
    + CHECK_VERSION_LUA
    + """
if found ~= ARGV[2] then return 0 end
local px = tonumber(ARGV[3])
if px <= 0 then
    redis.call('SET', KEYS[1], ARGV[1])
else
    redis.call('SET', KEYS[1], ARGV[1], 'PX', px)
end
"""
    + note_lua(3, 5)
    + """return 1
"""
)

# One round trip whatever the layout: a hash comes back as HGETALL's flat
# list, which the tier assembles (tiercache._fields.assemble); anything
# else is a GET (so a foreign type is WRONGTYPE, as before).
READ_LUA = """
if redis.call('TYPE', KEYS[1]).ok == 'hash' then
    return redis.call('HGETALL', KEYS[1])
end
return redis.call('GET', KEYS[1])
"""

# Compare-and-set of the fields layout. ARGV[1..5] are the note's (see
# note_lua; unused without KEYS[2]); ARGV[6] the new head, ARGV[7] the
# expected version, ARGV[8] the expiry (as CAS_LUA), ARGV[9] 'd' for a
# delta (only onto the hash at that version: else it lost) or 'f' to
# replace whatever is stored, ARGV[10] how many names to remove, then those
# names, then name/value pairs to set. Commands take at most 2,000
# arguments each: Lua's stack is the limit, not the session's size.
FIELDS_CAS_LUA = (
    CHECK_VERSION_LUA
    + """
if found ~= ARGV[7] then
    return 0
end
local full = ARGV[9] == 'f'
if not full and kind ~= 'hash' then
    return 0
end
local px = tonumber(ARGV[8])
if px < 0 then
    redis.call('DEL', KEYS[1])
else
    if full and kind ~= 'none' then
        redis.call('DEL', KEYS[1])
    end
    local ngone = tonumber(ARGV[10])
    local i = 11
    while i < 11 + ngone do
        local j = math.min(i + 1999, 10 + ngone)
        redis.call('HDEL', KEYS[1], unpack(ARGV, i, j))
        i = j + 1
    end
    redis.call('HSET', KEYS[1], '', ARGV[6])
    local n = #ARGV
    while i <= n do
        local j = math.min(i + 1999, n)
        redis.call('HSET', KEYS[1], unpack(ARGV, i, j))
        i = j + 1
    end
    if px == 0 then
        redis.call('PERSIST', KEYS[1])
    else
        redis.call('PEXPIRE', KEYS[1], px)
    end
end
"""
    + note_lua(2, 1)
    + """return 1
"""
)
