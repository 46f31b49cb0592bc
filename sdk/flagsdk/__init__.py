"""flagsdk: feature flags evaluated in-process, kept in sync with the flag server."""

from .client import FlagClient, User
from .engine import ConfigError, Evaluation, Snapshot, bucket

__all__ = ["ConfigError", "Evaluation", "FlagClient", "Snapshot", "User", "bucket"]
__version__ = "0.1.0"
