"""Configuration: line-aware YAML in, a validated and compiled Config out (errors name file and line)."""

from authz.config.build import KeySources, load_config
from authz.config.holder import SnapshotHolder
from authz.config.settings import Config, HttpSettings, JwksSettings, ServerSettings, TlsSettings

__all__ = [
    "Config",
    "HttpSettings",
    "JwksSettings",
    "KeySources",
    "ServerSettings",
    "SnapshotHolder",
    "TlsSettings",
    "load_config",
]
