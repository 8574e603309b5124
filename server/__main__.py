"""`quietstar serve` / `python -m server`: parse flags, build the app, run uvicorn.

On SIGINT/SIGTERM uvicorn stops accepting connections; running requests get --shutdown-timeout
seconds to finish, then are aborted (`server.api.drain`), and the lifespan stops the engine.
With --replicas N, Ray Serve serves instead (`server.replicas`).
uvicorn re-raises the signal once it is done, so the exit status reports it. A model that fails
to load, or an engine-core process that dies, stops the server with exit status 1.
"""

from __future__ import annotations

import asyncio
import socket
import sys

from server.config import configure_logging, from_args

DRAIN_MARGIN_S = 10.0  # aborted streams get this long to send their error event


def main(argv: list[str] | None = None) -> int:
    config = from_args(sys.argv[1:] if argv is None else argv)
    configure_logging(config.log_level)
    if config.replicas is not None:  # Ray Serve; nothing of Ray is imported otherwise
        from server.replicas import run

        return run(config)
    import uvicorn

    from server.api import build_app, drain
    from server.api.app import FATAL

    app = build_app(config)

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            draining = asyncio.create_task(drain(app, config.shutdown_timeout))
            try:
                await super().shutdown(sockets)
            finally:
                draining.cancel()

    server = Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=config.log_level,
            timeout_graceful_shutdown=config.shutdown_timeout + DRAIN_MARGIN_S,
        )
    )
    app.state.on_fatal = lambda: setattr(server, "should_exit", True)
    server.run()
    return 1 if app.state.status in FATAL else 0


if __name__ == "__main__":
    sys.exit(main())
