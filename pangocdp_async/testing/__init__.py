"""Test helpers, public: FakePangoCDP (a real server on loopback), a Bucket4j model of the
server's limiter, and an event loop that runs on virtual time."""

from ._bucket4j import Bucket4jBucket, ConsumeResult
from ._fake import FakePangoCDP, FakeRequest
from ._virtual_time import VirtualTimeLoop, run_in_virtual_time

__all__ = [
    "Bucket4jBucket",
    "ConsumeResult",
    "FakePangoCDP",
    "FakeRequest",
    "VirtualTimeLoop",
    "run_in_virtual_time",
]
