"""dpp_proto.retry: the one retry policy of client and worker. Fake clock, no sleeps."""

from __future__ import annotations

import json
import random
import threading

import pytest

from dpp_proto.retry import Backoff, channel_options, retry_service_config


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_delays_grow_to_the_cap() -> None:
    backoff = Backoff(initial_s=0.1, max_s=1.0, multiplier=2.0, jitter=0.0, clock=FakeClock())
    delays = [backoff.next_delay_s() for _ in range(7)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])


def test_jitter_stays_within_the_bound() -> None:
    backoff = Backoff(initial_s=0.1, max_s=1.0, jitter=0.5, rng=random.Random(3))
    bounds = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    for bound in bounds:
        delay = backoff.next_delay_s()
        assert delay is not None and bound / 2 <= delay <= bound


def test_reset_starts_again() -> None:
    backoff = Backoff(initial_s=0.1, max_s=1.0, jitter=0.0)
    for _ in range(4):
        backoff.next_delay_s()
    backoff.reset()
    assert backoff.next_delay_s() == pytest.approx(0.1)


def test_deadline_ends_the_retries() -> None:
    clock = FakeClock()
    backoff = Backoff(initial_s=1.0, max_s=4.0, jitter=0.0, deadline_s=5.0, clock=clock)
    assert backoff.next_delay_s() == 1.0
    clock.now += 1.0
    assert backoff.next_delay_s() == 2.0
    clock.now += 2.0
    assert backoff.next_delay_s() is None  # 3 s in, a 4 s delay would end past 5 s
    backoff.reset()  # a success restarts the deadline
    assert backoff.next_delay_s() == 1.0


def test_wait_returns_at_once_when_stopped_or_out_of_time() -> None:
    stop = threading.Event()
    stop.set()
    assert not Backoff(initial_s=60.0, max_s=60.0).wait(stop)
    clock = FakeClock()
    assert not Backoff(initial_s=1.0, deadline_s=0.5, clock=clock).wait(threading.Event())


def test_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="initial_s=2"):
        Backoff(initial_s=2.0, max_s=1.0)


def test_service_config_retries_unavailable_and_aborted() -> None:
    config = json.loads(retry_service_config(["dpp.v1.MasterService"]))
    [method] = config["methodConfig"]
    assert method["name"] == [{"service": "dpp.v1.MasterService"}]
    policy = method["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE", "ABORTED"]
    assert policy["maxAttempts"] == 5
    assert (policy["initialBackoff"], policy["maxBackoff"]) == ("0.1s", "5.0s")


def test_channel_options() -> None:
    options = dict(channel_options(["dpp.v1.MasterService"], max_receive_bytes=1 << 20))
    assert options["grpc.enable_retries"] == 1
    assert "retryPolicy" in options["grpc.service_config"]
    assert options["grpc.max_reconnect_backoff_ms"] == 1000
    assert options["grpc.max_receive_message_length"] == 1 << 20
    assert "grpc.service_config" not in dict(channel_options())
