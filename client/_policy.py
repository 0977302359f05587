"""RetryPolicy: the settings that bound how long a batch can wait on a replica that is slow, frozen or gone."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """How a client retries, hedges and re-resolves (the bound on a batch's extra wait is derived from these).

    * ``attempts``: failed tries of one batch (on any replicas) before the call fails.
    * ``initial_backoff``/``max_backoff``: exponential backoff with jitter, slept only when no healthy replica is
      left to try at once (failing over to a healthy replica does not wait).
    * ``timeout``: the deadline of one attempt of a unary call, and the longest a stream may wait for its next
      frame, however slow the replicas have been observed to be.
    * ``hedge_min``/``hedge_factor``: a unary call not answered within the hedge delay, ``hedge_factor`` times
      the median of the last 64 observed latencies but at least ``hedge_min`` (and at most ``timeout``), is
      sent to a second replica as well; the first answer wins and the other call is cancelled. A stream that
      waits as long for its next frame (three times as long for its first) is cancelled and resumed on
      another replica from the next undelivered batch; each consecutive stall doubles that wait.
    * ``cooldown``: a replica that failed or lost a hedge is skipped for ``cooldown`` seconds, doubled per
      consecutive failure (capped at 16x), while another replica is healthy.
    * ``resolve_every``: a ``dns:///name:port`` target is resolved again this often (and at once after a
      failure), so replicas added or removed behind a headless Service are seen within this period.
    * ``keepalive``: seconds between HTTP/2 pings on a connection with calls in flight; a replica that does not
      answer one within ``keepalive`` more seconds has its connection closed (frozen process, lost host).
    """

    attempts: int = 6
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    timeout: float = 120.0
    hedge_min: float = 1.0
    hedge_factor: float = 3.0
    cooldown: float = 1.0
    resolve_every: float = 5.0
    keepalive: float = 10.0

    def backoff(self, attempt: int) -> float:
        return float(min(self.max_backoff, self.initial_backoff * (2**attempt)) * (0.5 + random.random() / 2))

    def worst_extra_wait(self) -> float:
        """The bound on how much longer than usual one batch waits because of one replica (silent, slow, dead or
        refusing) while another is healthy, when the median latency is at most ``hedge_min / hedge_factor``:
        the hedge delay (``hedge_min``) before a unary call is also sent elsewhere or a stream is resumed
        elsewhere, plus the resumed stream's first-frame limit (``3 x hedge_min``). 4 s by default. Slower
        replicas scale it: the hedge delay is then ``hedge_factor x`` their median latency."""
        return self.hedge_min + 3 * self.hedge_min
