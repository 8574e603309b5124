"""Prometheus metrics of one app (its own CollectorRegistry): requests by outcome, engine queue
depth and running requests, visible / thought / prompt token counters, latency histograms."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

OUTCOMES = ("success", "invalid", "rejected", "aborted", "error")
LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0, 600.0)


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, engine: Callable[[], Any], in_flight: Callable[[], int]) -> None:
        """`engine()` returns the engine or None while loading; `in_flight()` counts admitted
        HTTP requests."""
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "quietstar_requests",
            "generation requests by endpoint and outcome (success, "
            "invalid = 4xx, rejected = queue full, aborted = client gone or shutdown, error)",
            ["endpoint", "outcome"],
            registry=r,
        )
        Gauge(
            "quietstar_num_requests_running", "engine requests being decoded", registry=r
        ).set_function(lambda: getattr(engine(), "num_running", 0))
        Gauge(
            "quietstar_num_requests_waiting", "engine requests queued for a slot", registry=r
        ).set_function(lambda: getattr(engine(), "num_waiting", 0))
        Gauge(
            "quietstar_num_requests_in_flight", "HTTP generation requests admitted", registry=r
        ).set_function(in_flight)
        self.prompt_tokens = Counter("quietstar_prompt_tokens", "prompt tokens", registry=r)
        self.visible_tokens = Counter(
            "quietstar_visible_tokens", "visible tokens generated", registry=r
        )
        self.thought_tokens = Counter(
            "quietstar_thought_tokens", "thought tokens sampled (markers excluded)", registry=r
        )
        self.ttft = Histogram(
            "quietstar_time_to_first_token_seconds",
            "arrival to first visible token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "quietstar_inter_token_latency_seconds",
            "between visible tokens of one choice (includes its thoughts)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "quietstar_e2e_request_latency_seconds",
            "arrival to last token",
            buckets=E2E_BUCKETS,
            registry=r,
        )

    def count_request(self, endpoint: str, outcome: str) -> None:
        self.requests.labels(endpoint, outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
