"""Environment variables read by the server, typed, in one place (nothing else reads os.environ)."""

from __future__ import annotations

import os

API_KEY = "QUIETSTAR_API_KEY"


def api_key() -> str | None:
    """QUIETSTAR_API_KEY: bearer token required on /v1/* when --api-key is not given (unset or
    empty: no authentication)."""
    return os.environ.get(API_KEY) or None
