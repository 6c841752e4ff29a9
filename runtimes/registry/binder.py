"""Binds an app's Schema Registry formats to one registry client, once, at startup."""

from __future__ import annotations

from typing import Any, TypeVar

from flows.schema_registry import Part, RegistryFormat
from runtimes.config import Settings, mask_url
from runtimes.registry.client import client_config, mock_url, registry_client
from runtimes.registry.formats import BoundFormat

T = TypeVar("T")


class RegistryBinder:
    """A :class:`flows.schema_registry.FormatBinder` over one confluent-kafka
    ``SchemaRegistryClient`` (:attr:`client`), shared by every format it binds: the
    client caches schemas by id and subject for all of them.

    Each place (declared format, topic, part) is bound once; asked again, the binder
    returns the same :class:`BoundFormat`, as the compiler expects.

    It is also a runtime of the facade (``name``, ``start``, ``stop``): nothing to start,
    since schemas are registered and looked up on first use, and stopping closes the
    client's connections, after the workers stopped.
    """

    name = "schema-registry"

    def __init__(self, client: Any, url: str) -> None:
        self.client = client
        #: the registry's URL, its password masked (for messages)
        self.url = mask_url(url)
        self._bound: dict[tuple[int, str, Part], tuple[RegistryFormat[Any], BoundFormat[Any]]]
        self._bound = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> RegistryBinder:
        """A binder to the registry of ``settings`` (URL, basic auth, TLS). Nothing is
        asked of the registry yet: schemas are registered and looked up on first use."""
        config = client_config(settings)
        return cls(registry_client(config), config["url"])

    def bind(self, fmt: RegistryFormat[T], topic: str, part: Part) -> BoundFormat[T]:
        key = (id(fmt), topic, part)
        found = self._bound.get(key)
        if found is None:
            # the declared format is kept beside its binding, so its id is never reused
            found = self._bound[key] = (fmt, BoundFormat(fmt, topic, part, self.client, self.url))
        bound: BoundFormat[T] = found[1]
        return bound

    def close(self) -> None:
        """Closes the client's HTTP connections."""
        self.client.close()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.close()


def mock_binder() -> RegistryBinder:
    """A binder to a fresh in-memory registry (confluent-kafka's ``mock://`` client),
    for tests: the test driver's default. Its :attr:`~RegistryBinder.client` serves
    confluent-kafka's own serializers and deserializers in a test too."""
    url = mock_url()
    return RegistryBinder(registry_client({"url": url}), url)


__all__ = ["RegistryBinder", "mock_binder"]
