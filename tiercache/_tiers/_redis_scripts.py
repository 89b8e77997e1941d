"""The Redis tier's Lua scripts: each check and the write it guards run as
one script, so no other client can write in between.

::

    compare_and_set         CAS_LUA         stored version == expected? then SET, SET PX or DEL
    quarantine              QUARANTINE_LUA  still the same bad bytes? copy them aside, DEL
    acquire_lease           ACQUIRE_LUA     lease free? token = INCR fence, SET lease PX ttl
    renew_/release_lease    RENEW_LUA,      lease still holds our token? PEXPIRE it / DEL it
                            RELEASE_LUA
    compare_and_set_fenced  FENCED_CAS_LUA  lease holds our token? then CHECK_VERSION_LUA,
                                            SET or SET PX
    (both, once written)    note_lua        XADD the invalidation to the bus's stream,
                                            when the tier publishes for a bus

An entry's version is read from the envelope bytes in place (see
:mod:`tiercache._envelope`), so the scripts are built from its layout.
"""

from __future__ import annotations

from .._envelope import MAGIC, MIN_SIZE, VERSION_OFFSET

__all__ = [
    "ACQUIRE_LUA",
    "CAS_LUA",
    "CHECK_VERSION_LUA",
    "FENCED_CAS_LUA",
    "QUARANTINE_LUA",
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
local cur = redis.call('GET', KEYS[1])
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
# (a writer that repaired the key meanwhile wins). ARGV[2]: ms to keep them.
QUARANTINE_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
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
