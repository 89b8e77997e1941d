"""The invalidation bus: tell other processes which keys changed, never the values.

::

    cache write acknowledged ──> bus.publish([(key, action, version), ...])
        RedisBus (_redis)  ──> XADD to the namespace's capped Redis Stream
        LocalBus (_local)  ──> the other LocalBuses of its LocalHub, in this thread
    every other process's bus ──> on_messages([Invalidation, ...]): drop those keys
                              └─> on_gap(): some may be lost, revalidate
        RedisBus's listener thread (_listener): position, replay, gap detection
        on a Redis Cluster (_cluster): several streams, a follower thread each

    Bus, _BusBase (_base)     the protocol the cache needs; the settings,
                              health and counters both buses share
    Invalidation (_message)   one message, and its form as a stream entry

Every name the bus's modules define is importable from here, as when the
bus was one module (the cache imports ``Bus`` and ``Invalidation``, tests
the rest). Patch a setting in the module that reads it (``_listener`` for
the backoff), not here.
"""

from __future__ import annotations

from ._base import Bus as Bus
from ._base import OnGap as OnGap
from ._base import OnMessages as OnMessages
from ._base import _BusBase as _BusBase
from ._base import log as log
from ._cluster import DEFAULT_STREAMS as DEFAULT_STREAMS
from ._cluster import MAX_STREAMS as MAX_STREAMS
from ._listener import BACKOFF_BASE as BACKOFF_BASE
from ._listener import BACKOFF_CAP as BACKOFF_CAP
from ._listener import LISTENER_NAME as LISTENER_NAME
from ._listener import READ_COUNT as READ_COUNT
from ._listener import _read_gap as _read_gap
from ._listener import _resume_gap as _resume_gap
from ._listener import _StreamListener as _StreamListener
from ._listener import _text as _text
from ._local import LocalBus as LocalBus
from ._local import LocalHub as LocalHub
from ._message import _ACTIONS as _ACTIONS
from ._message import _MARK_B as _MARK_B
from ._message import CLUSTER_WIRE_VERSION as CLUSTER_WIRE_VERSION
from ._message import MARK as MARK
from ._message import WIRE_VERSION as WIRE_VERSION
from ._message import Action as Action
from ._message import Invalidation as Invalidation
from ._message import PublishItem as PublishItem
from ._message import _decode as _decode
from ._message import _fields as _fields
from ._message import cluster_stream_keys as cluster_stream_keys
from ._message import key_slot as key_slot
from ._message import stream_index as stream_index
from ._message import stream_key as stream_key
from ._redis import RedisBus as RedisBus

__all__ = [
    "Bus",
    "Invalidation",
    "LocalBus",
    "LocalHub",
    "RedisBus",
    "stream_key",
]
