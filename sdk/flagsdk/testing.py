"""Set flag values in your own tests, without a server.

    from flagsdk.testing import TestData

    data = TestData()
    data.flag("new-checkout").on()                    # everyone gets "on"
    data.flag("layout").variants("control", "blue").serve("blue")
    data.flag("beta").percentage(0).for_users("on", "user-1")  # only user-1
    client = data.client()                            # an offline FlagClient
    data.flag("new-checkout").off()                   # clients see it at once

The flags go through the real engine, so what your code sees is what a real
config with the same settings would give.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from typing import Any

from .client import FlagClient

__all__ = ["FlagBuilder", "TestData"]


class FlagBuilder:
    """One flag of a `TestData`; every method applies at once and returns the builder."""

    def __init__(self, data: TestData, key: str) -> None:
        self._data = data
        self.key = key
        self._variants: list[str] = ["off", "on"]
        self._enabled = True
        self._rollout: float | dict[str, int] = 0
        self._rules: list[dict[str, Any]] = []

    def variants(self, *names: str) -> FlagBuilder:
        """Declare the variants; the first is what everyone gets when the flag is off."""
        self._variants = list(names)
        self._rollout = 0
        return self._changed()

    def on(self) -> FlagBuilder:
        """Everyone gets the last variant."""
        self._enabled, self._rollout = True, 100
        return self._changed()

    def off(self) -> FlagBuilder:
        """The kill switch: everyone gets the first variant, reason DISABLED."""
        self._enabled = False
        return self._changed()

    def disabled(self) -> FlagBuilder:
        """The same as `off()`."""
        return self.off()

    def serve(self, variant: str) -> FlagBuilder:
        """Everyone gets `variant`."""
        self._enabled, self._rollout = True, {v: (10000 if v == variant else 0) for v in self._variants}
        return self._changed()

    def percentage(self, percentage: float) -> FlagBuilder:
        """`percentage`% of users (by the real bucketing) get the last variant."""
        self._enabled, self._rollout = True, percentage
        return self._changed()

    def for_users(self, variant: str, *keys: str) -> FlagBuilder:
        """These user keys get `variant`, whatever the rest gets."""
        rule_id = f"users-{len(self._rules)}"
        self._rules.append({"id": rule_id, "conditions": [{"attribute": "key", "op": "in", "values": list(keys)}],
                            "serve": variant})
        return self._changed()

    def when(self, attribute: str, op: str, values: list[Any], variant: str) -> FlagBuilder:
        """Users whose `attribute` meets `op values` get `variant`."""
        rule_id = f"rule-{len(self._rules)}"
        self._rules.append({"id": rule_id, "conditions": [{"attribute": attribute, "op": op, "values": values}],
                            "serve": variant})
        return self._changed()

    def to_dict(self) -> dict[str, Any]:
        return {"enabled": self._enabled, "variants": self._variants, "rules": self._rules,
                "rollout": self._rollout, "salt": self.key}

    def _changed(self) -> FlagBuilder:
        self._data._publish()
        return self


class TestData:
    """A set of flags for tests; `client()` gives offline clients that follow changes."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self._flags: dict[str, FlagBuilder] = {}
        self._clients: weakref.WeakSet[FlagClient] = weakref.WeakSet()
        self._versions = itertools.count(1)
        self._lock = threading.Lock()

    def flag(self, key: str) -> FlagBuilder:
        """The builder of flag `key`, created (on, served to nobody) if new."""
        if key not in self._flags:
            self._flags[key] = FlagBuilder(self, key)
            self._publish()
        return self._flags[key]

    def document(self) -> dict[str, Any]:
        """The config document these flags make."""
        return {"environment": "test", "version": next(self._versions), "segments": {},
                "flags": {k: b.to_dict() for k, b in self._flags.items()}}

    def client(self) -> FlagClient:
        """An offline `FlagClient` serving these flags, now and after every change."""
        client = FlagClient(offline=True, bootstrap=self.document())
        self._clients.add(client)
        return client

    def _publish(self) -> None:
        with self._lock:
            document = self.document()
            for client in list(self._clients):
                client._apply_document(document, source="TestData")
