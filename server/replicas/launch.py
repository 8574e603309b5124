"""`run(config)`: join or start a Ray cluster, deploy the app on Ray Serve's HTTP proxy at
--host:--port, wait for SIGINT/SIGTERM, then drain and stop.

Stopping deletes the application: Ray Serve stops sending the replicas new requests and gives
the running ones --shutdown-timeout seconds (`graceful_shutdown_timeout_s`) before it stops
them. A local cluster started here is shut down too; a joined one (--ray-address) keeps running.
All of it runs under one deadline, --shutdown-timeout + TEARDOWN_MARGIN_S (`Teardown`): Ray's
own waits add up to minutes and `ray.shutdown` has none. Past it the process exits with status
1; a local cluster's processes, which Ray binds to this one, exit after it.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading

import ray
from ray import serve

from server.config import ServerConfig
from server.replicas.deployments import APP_NAME, build_application
from server.teardown import Teardown

log = logging.getLogger(__name__)
TEARDOWN_MARGIN_S = 30.0  # beyond --shutdown-timeout: Ray stopping the replicas and itself


def run(config: ServerConfig) -> int:
    is_local = config.ray_address is None
    _init_ray(config)
    stop = _stop_on_signals()
    teardown = None
    try:
        serve.start(http_options={"host": config.host, "port": config.port})
        serve.run(
            build_application(config, _gpus_per_replica(config)), name=APP_NAME, route_prefix="/"
        )
        log.info(
            "serving %d replica(s) of %r on http://%s:%d through Ray Serve",
            config.replicas,
            config.model_name,
            config.host,
            config.port,
        )
        stop.wait()
        teardown = Teardown(config.shutdown_timeout + TEARDOWN_MARGIN_S)
        log.info("stopping: draining the replicas (up to %.0fs)", config.shutdown_timeout)
        teardown.step("draining and deleting the application", serve.delete, APP_NAME)
    finally:
        teardown = teardown or Teardown(TEARDOWN_MARGIN_S)
        if is_local:
            teardown.step("stopping Ray Serve", serve.shutdown)
            teardown.step("stopping the local Ray cluster", ray.shutdown)
    teardown.stopped()  # not after an exception: that stop was not clean
    return 0


def _init_ray(config: ServerConfig) -> None:
    if config.ray_address is not None:
        ray.init(address=config.ray_address, logging_level=config.log_level.upper())
        return
    needed = math.ceil((config.replicas or 1) * config.replica_cpus)
    cores = os.cpu_count() or 1
    if needed > cores:
        log.warning(
            "%d replica(s) x %g CPUs exceed this machine's %d cores: they will share them",
            config.replicas,
            config.replica_cpus,
            cores,
        )
    ray.init(
        num_cpus=max(cores, needed),
        include_dashboard=False,
        logging_level=config.log_level.upper(),
    )


def _gpus_per_replica(config: ServerConfig) -> float:
    """One GPU per replica for --device cuda (Ray sets each one's CUDA_VISIBLE_DEVICES)."""
    return 1.0 if config.engine.device.startswith("cuda") else 0.0


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    return stop
