"""The built-in plugins. They use the same hooks as third-party plugins do.

Registered from this explicit list (not entry points), so a broken install cannot lose them.
"""

BUILTIN_PLUGINS = (
    "plugins.backends.memory",
    "plugins.backends.redis",
    "plugins.backends.sqlite",
    "plugins.overflow",
    "plugins.resolution",
)
