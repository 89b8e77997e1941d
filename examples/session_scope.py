"""``cache.session()`` directly: commit, rollback, and what a read costs.

python examples/session_scope.py [directory]
"""

from __future__ import annotations

import sys
import tempfile

from tiercache import DetachedError, DiskTier, MemoryTier, TieredCache


def main() -> None:
    directory = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()
    with TieredCache(MemoryTier(), DiskTier(directory), namespace="scope-demo") as cache:
        # A changed scope is written once, when it ends.
        with cache.session("user:1") as s:
            s["name"] = "Ann"
            s.setdefault("cart", []).append({"sku": "tea", "qty": 1})
        print("committed:", cache.get("user:1"))

        # A scope that only reads writes nothing.
        with cache.session("user:1") as s:
            total = sum(item["qty"] for item in s["cart"])
        print("items in cart:", total, "| writes avoided:", cache.stats().writes_avoided)

        # A scope whose body raises leaves the session as it was.
        try:
            with cache.session("user:1") as s:
                s["cart"][0]["qty"] = 99
                raise RuntimeError("payment failed")
        except RuntimeError:
            pass
        print("rolled back:", cache.get("user:1"))

        # The value is read-only outside a scope: stale writes fail loudly.
        try:
            s["name"] = "Bob"
        except DetachedError as exc:
            print("stale write refused:", type(exc).__name__)

        print()
        print(cache.stats())


if __name__ == "__main__":
    main()
