"""The web console: adapters, jobs and a playground, as static pages that call the control plane and
the inference app with the visitor's API key.

The pages are plain HTML, CSS and ES modules committed under `static/` (no Node build, no CDN): the
console has no server-side logic of its own, so every rule of the API (scopes, tenant isolation,
limits) applies to it unchanged, and what a page shows is exactly what its key may read.
"""

from ulpt.console.app import STATIC, ConsoleConfig, build_console_app

__all__ = ["STATIC", "ConsoleConfig", "build_console_app"]
