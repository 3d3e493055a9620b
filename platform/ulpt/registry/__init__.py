"""The registry: adapters in one catalog and one store, the way every layer above the core reaches them.

    registry = Locations.resolve().open_registry()          # or Registry(catalog, store)
    record = registry.register(Registration(adapter, name="user-42"), tenant="default")
    registry.for_tenant("default").find(base_model="smollm2")  # a tenant-bound view

Modules: `api` (Registry: registration protocol, reads, aliases, deletion, export), `records` (what
reads return, and loading a verified adapter), `registration` (checks before any write), `garbage`
(collecting blobs no live adapter names), `view` (a tenant-bound view), `locations` (where the
catalog and the store are).
"""

from ulpt.registry.api import Registry
from ulpt.registry.garbage import GcReport
from ulpt.registry.locations import Locations
from ulpt.registry.records import AdapterRecord, AliasChange, Lineage, Page, load_adapter, record_from
from ulpt.registry.registration import Registration, blob_config
from ulpt.registry.view import Adapters

__all__ = [
    "AdapterRecord",
    "Adapters",
    "AliasChange",
    "GcReport",
    "Lineage",
    "Locations",
    "Page",
    "Registration",
    "Registry",
    "blob_config",
    "load_adapter",
    "record_from",
]
