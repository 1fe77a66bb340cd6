"""Configuration: line-aware YAML -> the model (msgspec; the JSON Schema) -> a compiled Config.

Every error names the file, the line and the reason.
"""

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
