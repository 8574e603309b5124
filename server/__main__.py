"""`quietstar serve` / `python -m server`: parse flags, build the app, run uvicorn.

uvicorn handles SIGINT/SIGTERM: it stops accepting connections, lets running requests finish
for --shutdown-timeout seconds, then the app's lifespan stops the engine.
"""

from __future__ import annotations

import sys

from server.config import configure_logging, from_args


def main(argv: list[str] | None = None) -> int:
    config = from_args(sys.argv[1:] if argv is None else argv)
    configure_logging(config.log_level)
    import uvicorn

    from server.api import build_app

    app = build_app(config)
    server = uvicorn.Server(uvicorn.Config(
        app, host=config.host, port=config.port, log_level=config.log_level,
        timeout_graceful_shutdown=config.shutdown_timeout,
    ))
    app.state.on_load_failure = lambda: setattr(server, "should_exit", True)
    server.run()
    return 1 if app.state.status == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
