"""ulpt_control: the tenant-facing control plane over HTTP (jobs, catalog, files, keys), behind API keys.

    from ulpt_control import ControlConfig, build_app
    app = build_app(ControlContext.open(ControlConfig()))       # a FastAPI app (tests, any ASGI server)
    serve.run(build_application(ControlConfig()))               # its own Ray Serve application

Callers hold a key, never the database password: every route acts as the key's tenant, within the
key's scopes (read, train, admin), and anything of another tenant reads exactly like nothing.
"""

from ulpt_control.app import build_app
from ulpt_control.config import ControlConfig
from ulpt_control.context import ControlContext

__all__ = ["ControlConfig", "ControlContext", "build_app"]
