"""Test helpers, public: FakePangoCDP (a real server on loopback), InProcessTransport (no
sockets), a Bucket4j model of the server's limiter, an event loop that runs on virtual time,
a simulation of many senders against the model server, and realistic sample orders."""

from ._bucket4j import Bucket4jBucket, ConsumeResult, Refill
from ._fake import FakePangoCDP, FakeRequest
from ._samples import sample_orders, write_jsonl
from ._simulation import (
    SimulationResult,
    greedy_server_ceiling,
    lognormal_latency,
    max_in_any_window,
    pareto_latency,
    random_stalls,
    scheduler_hooks,
    simulate_senders,
    sliding_ceiling,
    token_bucket_ceiling,
    window_excess,
)
from ._transport import InProcessTransport, Respond, ok
from ._virtual_time import VirtualTimeLoop, run_in_virtual_time

__all__ = [
    "Bucket4jBucket",
    "ConsumeResult",
    "FakePangoCDP",
    "FakeRequest",
    "InProcessTransport",
    "Refill",
    "Respond",
    "SimulationResult",
    "VirtualTimeLoop",
    "greedy_server_ceiling",
    "lognormal_latency",
    "max_in_any_window",
    "ok",
    "pareto_latency",
    "random_stalls",
    "run_in_virtual_time",
    "sample_orders",
    "scheduler_hooks",
    "simulate_senders",
    "sliding_ceiling",
    "token_bucket_ceiling",
    "window_excess",
    "write_jsonl",
]
