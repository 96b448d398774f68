"""One retry policy for every dpp gRPC caller (workers and trainers alike).

Owns two pieces, and nothing else of retrying lives anywhere in dpp:

* :func:`channel_options`: the options of a channel to a dpp service. They carry gRPC's own
  retry (a ``retryPolicy`` in the channel's service config: UNAVAILABLE and ABORTED are
  retried by gRPC with capped, jittered backoff, within each call's deadline) and a fast
  reconnect, so that a call made with ``wait_for_ready=True`` waits out a master restart and
  goes through within ~1 s of the port opening again (gRPC's default reconnect backoff
  reaches 120 s). Unary calls to the master need nothing more.
* :class:`Backoff`: capped exponential backoff with jitter and an optional deadline, for what
  gRPC's retry cannot do: re-open a stream that broke after its first response (gRPC retries a
  call only until a response has arrived), or wait across an outage longer than one call.

Lives in ``dpp_proto`` because both sides import it: ``dpp_client`` must never import
``dpp_server``, and a worker must not need torch. Imports the standard library only (grpc
reads the options; this module does not need grpc itself).

Worked example (a trainer, the master killed and restarted at t=0 s, back at t=2 s):

1. t=0: the loader's AckBatches (``wait_for_ready=True``, deadline ``rpc_timeout_s``) finds
   the channel broken; gRPC queues the call instead of failing it.
2. The channel re-dials after 0.1, 0.2, 0.4, 0.8, 1, 1 ... s (``max_reconnect_backoff_ms``).
3. t~2.1: the channel is READY; the queued call is sent and answered. Had the master answered
   UNAVAILABLE instead (draining), gRPC would have retried it up to ``max_attempts`` times.
4. Meanwhile a worker's stream, broken at t=0 after many frames, is re-opened by the fan-in's
   own loop, waiting ``Backoff`` delays (0.1, 0.2, 0.4 ... 5 s, jittered) between tries.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["RETRYABLE_STATUS_CODES", "Backoff", "channel_options", "retry_service_config"]

#: Status codes that mean "try again": the server was unreachable, restarting or draining
#: (UNAVAILABLE) or a transaction lost a race (ABORTED). Everything else fails fast.
RETRYABLE_STATUS_CODES: tuple[str, ...] = ("UNAVAILABLE", "ABORTED")


def retry_service_config(
    services: Sequence[str],
    *,
    max_attempts: int = 5,
    initial_backoff_s: float = 0.1,
    max_backoff_s: float = 5.0,
    backoff_multiplier: float = 2.0,
) -> str:
    """The service config JSON giving ``services``' methods gRPC's retry policy.

    Args:
        services: fully qualified service names, e.g. ``"dpp.v1.MasterService"``.
        max_attempts: attempts per call, the first included; gRPC caps it at 5.
        initial_backoff_s: upper bound of the first (uniformly jittered) delay.
        max_backoff_s: cap of the delay bound, which grows by ``backoff_multiplier``.
        backoff_multiplier: growth of the delay bound after each attempt.
    """
    policy = {
        "maxAttempts": max_attempts,
        "initialBackoff": f"{initial_backoff_s}s",
        "maxBackoff": f"{max_backoff_s}s",
        "backoffMultiplier": backoff_multiplier,
        "retryableStatusCodes": list(RETRYABLE_STATUS_CODES),
    }
    return json.dumps(
        {"methodConfig": [{"name": [{"service": s} for s in services], "retryPolicy": policy}]}
    )


def channel_options(
    services: Sequence[str] = (),
    *,
    max_receive_bytes: int | None = None,
    max_send_bytes: int | None = None,
) -> list[tuple[str, Any]]:
    """Options for ``grpc.insecure_channel``: retry policy for ``services``, fast reconnect.

    Args:
        services: services whose unary calls gRPC retries (none: reconnect settings only,
            e.g. for a channel that carries only a long-lived stream).
        max_receive_bytes: largest message accepted (gRPC's default is 4 MiB).
        max_send_bytes: largest message sent.
    """
    options: list[tuple[str, Any]] = [
        # Re-dial fast after a restart, so heartbeats resume well within a lease timeout.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    if services:
        options += [
            ("grpc.enable_retries", 1),
            ("grpc.service_config", retry_service_config(services)),
        ]
    if max_receive_bytes is not None:
        options.append(("grpc.max_receive_message_length", max_receive_bytes))
    if max_send_bytes is not None:
        options.append(("grpc.max_send_message_length", max_send_bytes))
    return options


class Backoff:
    """Capped exponential backoff with jitter and an optional deadline.

    One per retry loop, used by one thread (not thread-safe): call :meth:`wait` after each
    failure, :meth:`reset` after each success.

    Args:
        initial_s: the first delay's bound.
        max_s: the cap of every delay. Lower reconnects sooner after a long outage, at the cost
            of more attempts during it.
        multiplier: growth of the bound after each failure.
        jitter: fraction of each delay drawn at random (``delay = bound * (1 - jitter * u)``,
            ``u`` uniform in [0, 1)), so that many clients do not retry in lockstep.
        deadline_s: seconds from construction (or :meth:`reset`) after which :meth:`wait`
            gives up; None waits for as long as the caller keeps failing.
        clock: a monotonic clock (a fake one in tests).
        rng: the jitter's random source (a seeded one in tests).
    """

    def __init__(
        self,
        initial_s: float = 0.1,
        max_s: float = 5.0,
        multiplier: float = 2.0,
        jitter: float = 0.5,
        deadline_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < initial_s <= max_s or multiplier < 1 or not 0 <= jitter <= 1:
            raise ValueError(
                f"backoff needs 0 < initial_s <= max_s, multiplier >= 1, 0 <= jitter <= 1; got "
                f"initial_s={initial_s}, max_s={max_s}, multiplier={multiplier}, jitter={jitter}"
            )
        self.initial_s = initial_s
        self.max_s = max_s
        self.multiplier = multiplier
        self.jitter = jitter
        self.deadline_s = deadline_s
        self._clock = clock
        self._rng = rng or random.Random()
        self._bound_s = initial_s
        self._started = clock()

    def reset(self) -> None:
        """A success: the next delay is the first one again, and the deadline restarts."""
        self._bound_s = self.initial_s
        self._started = self._clock()

    def next_delay_s(self) -> float | None:
        """The delay before the next attempt, or None when it would end past the deadline."""
        delay = self._bound_s * (1 - self.jitter * self._rng.random())
        if self.deadline_s is not None and (
            self._clock() + delay > self._started + self.deadline_s
        ):
            return None
        self._bound_s = min(self._bound_s * self.multiplier, self.max_s)
        return delay

    def wait(self, stop: threading.Event) -> bool:
        """Waits the next delay; True to try again, False when ``stop`` is set or time is up."""
        delay = self.next_delay_s()
        if delay is None:
            return False
        return not stop.wait(delay)
