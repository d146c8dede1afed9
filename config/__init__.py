"""Settings and policy: the only place configuration is read. Imports nothing of ours."""

from config.errors import ConfigError
from config.settings import Settings, get_settings, load_settings, reset_settings_cache

__all__ = ["ConfigError", "Settings", "get_settings", "load_settings", "reset_settings_cache"]
