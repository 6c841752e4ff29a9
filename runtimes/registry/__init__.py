"""The Schema Registry adapter: binds the core's declared registry formats
(:mod:`flows.schema_registry`) to confluent-kafka's serializers and a registry client.

``flows run`` binds an app's formats once at startup (:meth:`flows.App.bind` with
:meth:`RegistryBinder.from_settings`); :class:`flows.testing.TestDriver` with
:func:`mock_binder`. Nothing else sees confluent-kafka's registry classes or errors.
"""

from runtimes.registry.binder import RegistryBinder, mock_binder
from runtimes.registry.formats import BoundFormat

__all__ = ["BoundFormat", "RegistryBinder", "mock_binder"]
