"""The SQL catalog: what adapters exist, who owns them, where their blobs are, and the jobs that made them.

    catalog = open_catalog("postgresql+psycopg://ulpt@db/ulpt")     # or sqlite:///PATH
    with catalog.session() as session:                             # one transaction
        row = adapters.resolve(session, "default", "user-42:3")

Query functions live in `adapters`, `find`, `jobs`, `tenants`, `base_models` and `api_keys` and take
a Session first; `lifecycle` holds the job and fit statuses, their transitions, and every status write.
"""

from ulpt.catalog.api_keys import NewApiKey, create_api_key, revoke_api_key, verify_api_key
from ulpt.catalog.db import SCHEMA_REVISION, Catalog, display_url, open_catalog, sqlite_url
from ulpt.catalog.find import AdapterQuery, Threshold, parse_thresholds
from ulpt.catalog.names import Ref, parse_ref

__all__ = [
    "SCHEMA_REVISION",
    "AdapterQuery",
    "Catalog",
    "NewApiKey",
    "Ref",
    "Threshold",
    "create_api_key",
    "display_url",
    "open_catalog",
    "parse_ref",
    "parse_thresholds",
    "revoke_api_key",
    "sqlite_url",
    "verify_api_key",
]
