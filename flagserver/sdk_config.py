"""The config document each environment's SDKs fetch, built once per change.

A request reads only the environment's config version (one small storage read);
the JSON body, its ETag and the compiled snapshot are rebuilt only when that
version moved. When storage is down, the last document is served and marked stale.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from flagsdk.engine import Snapshot

from .storage import Store, StoreUnavailable


@dataclass(slots=True)
class CachedConfig:
    environment: str
    version: int
    body: bytes
    etag: str
    document: dict[str, Any]
    stale: bool = False
    _snapshot: Snapshot | None = field(default=None, repr=False)

    def snapshot(self) -> Snapshot:
        """The compiled engine snapshot of this document (built on first use)."""
        if self._snapshot is None:
            self._snapshot = Snapshot.from_dict(self.document)
        return self._snapshot


class ConfigCache:
    """Per-environment cache of the SDK config document."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._entries: dict[str, CachedConfig] = {}
        self._lock = threading.Lock()

    def get(self, env: str) -> CachedConfig:
        """The current document of `env`. Raises `StoreUnavailable` only when
        storage is down and this process has never built the document."""
        entry = self._entries.get(env)
        try:
            version = self._store.config_version(env)
        except StoreUnavailable:
            if entry is None:
                raise
            return CachedConfig(env, entry.version, entry.body, entry.etag, entry.document, True, entry._snapshot)
        if entry is not None and entry.version >= version:
            return entry
        with self._lock:
            entry = self._entries.get(env)
            if entry is not None and entry.version >= version:
                return entry
            document = self._store.config_document(env)
            # Never sort keys: the order of variant weights is part of their meaning.
            body = json.dumps(document, separators=(",", ":")).encode()
            entry = CachedConfig(env, document["version"], body, f'"{env}-{document["version"]}"', document)
            self._entries[env] = entry
            return entry
