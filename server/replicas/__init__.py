"""`quietstar serve --replicas N`: N engine replicas behind Ray Serve (the `ray` extra).

Ray Serve's HTTP proxy → one `Ingress` replica (the usual FastAPI app: routes, auth, error
envelope, SSE, thoughts controls, /metrics) → N `EngineReplica`s (each its own engine, in its
own core process or on a thread, `--engine-core`), reached through a deployment handle with Ray's
own routing (power of two choices, `max_ongoing_requests` per replica). This is the layout of Ray
Serve LLM (an OpenAI ingress in front of model-server deployments): the ingress keeps
tokenisation and SSE, so a replica that dies mid-stream ends its streams with an error event.
Nothing here is imported without --replicas.
"""

from __future__ import annotations

from server.replicas.launch import run

__all__ = ["run"]
