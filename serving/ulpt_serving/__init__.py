"""ulpt_serving: one Ray Serve endpoint whose batches mix many ULPT adapters (DESIGN section 6).

    from ulpt_serving import ServeConfig, build_application
    serve.run(build_application(ServeConfig(model="smollm2-135m")))

The Ray Serve pieces import lazily, so the engine and the adapter cache work without Ray.
"""

from ulpt_serving.cache import AdapterCache, CacheStats, CompactAdapter
from ulpt_serving.config import ServeConfig
from ulpt_serving.engine import BatchItem, Engine, TextStream

__all__ = [
    "AdapterCache",
    "BatchItem",
    "CacheStats",
    "CompactAdapter",
    "Engine",
    "ServeConfig",
    "TextStream",
]
