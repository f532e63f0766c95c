"""The `redis` backend plugin: standalone, Sentinel or Cluster, shared by sidecar replicas."""

from __future__ import annotations

from plugins.backends.redis.backend import RedisBackend
from sidecar.backends.base import Backend
from sidecar.plugin import hookimpl
from sidecar.plugin.registry import Registry

__all__ = ["RedisBackend"]


@hookimpl
def atlantis_sidecar_register_backends(registry: Registry[type[Backend]]) -> None:
    registry.register(RedisBackend.name, RedisBackend)
