"""What the parts of the Redis backend share: the client, the key layout, the
transaction machinery, the clock, and the steps every operation takes.

`RedisStore` is assembled from mixins (`_redis_events.RedisEvents`,
`_redis_rollouts.RedisRollouts`) that each inherit this base, so that each file
stays about one subject and all of them write through the same client, the same
transactions and the same audit log.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.commands.core import Script

from ._redis_keys import Keys
from ._redis_tx import Transactor
from .base import NotFound, Record


class RedisBase:
    # set by RedisStore.__init__
    _redis: redis.Redis
    _keys: Keys
    _tx: Transactor
    _clock: Callable[[], float]
    _scripts: dict[str, Script]

    def _audit(self, actor: str, action: str, env: str | None, target_type: str, target_key: str,
               before: Record | None, after: Record | None) -> Record:
        return {"at": self._clock(), "actor": actor, "action": action, "environment": env,
                "target_type": target_type, "target_key": target_key, "before": before, "after": after}

    @staticmethod
    def _require_env(exists: bool, env: str) -> None:
        if not exists:
            raise NotFound("environment", env)

    def _run(self, lua: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a Lua script by its SHA1 (loading it once per Redis restart)."""
        script = self._scripts.get(lua)
        if script is None:
            script = self._scripts[lua] = self._redis.register_script(lua)
        return script(keys=keys, args=args)
