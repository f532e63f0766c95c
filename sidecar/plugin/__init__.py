"""The plugin API: implement hooks from `sidecar.plugin.spec` with `hookimpl`."""

from sidecar.plugin.spec import hookimpl

__all__ = ["hookimpl"]
