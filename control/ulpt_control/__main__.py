"""`python -m ulpt_control openapi`: print the control plane's OpenAPI schema (what `make schema` writes)."""

from __future__ import annotations

import json
import sys

from ulpt_control.app import openapi_schema

if __name__ == "__main__":
    if sys.argv[1:] != ["openapi"]:
        sys.exit("usage: python -m ulpt_control openapi")
    print(json.dumps(openapi_schema(), indent=2))
