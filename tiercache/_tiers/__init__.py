"""Tiers: where a cache keeps its entries, fastest first.

``MemoryTier`` holds live objects; the persistent tiers (:class:`DictTier`,
:class:`DiskTier`, :class:`RedisTier`, or your own :class:`PersistentTier`)
store envelope bytes.
"""

from __future__ import annotations

from ._base import PersistentTier, SetItem
from ._dict import DictTier
from ._disk import DiskTier
from ._memory import MemoryTier
from ._redis import RedisTier

__all__ = ["DictTier", "DiskTier", "MemoryTier", "PersistentTier", "RedisTier", "SetItem"]
