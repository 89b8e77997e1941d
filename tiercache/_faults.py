"""Fault injection: wrappers that make a tier, a bus or a serializer fail on cue.

::

    test ──faults.fail_next(1) / down() / latency(s) / drop_next(n)──> Faults
                                                                      (shared, thread-safe)
                                                                        ▲ asked on every call
    TieredCache ──get/set/...──> FaultyTier ──────(ok)──────> the wrapped PersistentTier
                │                    └─(fault)─> TierError from ConnectionError
                ├──publish──> FaultyBus ──(ok, minus dropped messages)──> the wrapped Bus
                │                    └─(fault)─> TierError from ConnectionError
                └──dumps/loads──> FaultySerializer ──(ok)──> the wrapped Serializer
                                     └─(fault)─> SerializationError / CorruptEntryError

An injected failure is raised exactly as a real backend failure reaches the
cache after a tier wrapped it, so a test exercises the same code paths as a
Redis outage would. One :class:`Faults` may be shared by several wrappers
(a whole "network" going down), or each wrapper may have its own.

Example::

    from tiercache import MemoryTier, TieredCache
    from tiercache.testing import DictTier, Faults, FaultyTier

    faults = Faults()
    cache = TieredCache(MemoryTier(), FaultyTier(DictTier(), faults), namespace="t")
    faults.down()                 # every tier call raises TierError
    faults.up()
    faults.fail_next(1)           # only the next one does

The modules::

    Faults, _Gate (_faultplan)      the plan and its checks; the wait-then-
                                    maybe-fail step every wrapper runs
    FaultyTier, FaultyBus,          the wrappers, each only its error and
    FaultySerializer (_faulty)      what it delegates to

Every name the two modules define is importable from here, as when they
were one module (:mod:`tiercache.testing` imports the four public classes
from here). A re-export is a second binding: rebinding a name here does not
change what the module holding it reads.
"""

from __future__ import annotations

from ._faultplan import _INJECTED as _INJECTED
from ._faultplan import _KNOWN_METHODS as _KNOWN_METHODS
from ._faultplan import _TIER_METHODS as _TIER_METHODS
from ._faultplan import ExcSpec as ExcSpec
from ._faultplan import Faults as Faults
from ._faultplan import _cause as _cause
from ._faultplan import _check_count as _check_count
from ._faultplan import _check_exc as _check_exc
from ._faultplan import _check_probability as _check_probability
from ._faultplan import _Gate as _Gate
from ._faulty import FaultyBus as FaultyBus
from ._faulty import FaultySerializer as FaultySerializer
from ._faulty import FaultyTier as FaultyTier

__all__ = ["Faults", "FaultyBus", "FaultySerializer", "FaultyTier"]
