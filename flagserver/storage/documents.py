"""Turning stored records into the config document SDKs receive (shared by backends)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .base import Record


def flag_wire(flag: Record) -> dict[str, Any]:
    """The flag object of the config document for a stored flag record."""
    return {
        "enabled": flag["enabled"],
        "salt": flag.get("salt") or flag["key"],
        "bucket_by": flag.get("bucket_by", "key"),
        "variants": flag["variants"],
        "rules": flag["rules"],
        "rollout": flag["rollout"],
        "hash_version": flag.get("hash_version", 1),
        "version": flag["version"],
    }


def segment_wire(segment: Record) -> dict[str, Any]:
    """The segment object of the config document for a stored segment record."""
    out: dict[str, Any] = {}
    for name in ("included", "excluded", "conditions"):
        if segment.get(name):
            out[name] = segment[name]
    if segment.get("percentage") is not None:
        out["percentage"] = segment["percentage"]
    if segment.get("bucket_by", "key") != "key":
        out["bucket_by"] = segment["bucket_by"]
    return out


def build_config_document(
    env: str, version: int, flags: Iterable[Record], segments: Iterable[Record]
) -> dict[str, Any]:
    """DESIGN.md's config document for one environment."""
    return {
        "environment": env,
        "version": version,
        "segments": {s["key"]: segment_wire(s) for s in sorted(segments, key=lambda s: s["key"])},
        "flags": {f["key"]: flag_wire(f) for f in sorted(flags, key=lambda f: f["key"])},
    }
