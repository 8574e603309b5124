"""The HTTP layer: OpenAI-compatible routes over the engine (`build_app`)."""

from server.api.app import build_app, drain

__all__ = ["build_app", "drain"]
