"""Silence on the broker connection: what /readyz reads to tell a cut link within a heartbeat."""

from worker.transport.silence import Silence


class Connection:
    def __init__(self):
        self.bytes_received = 0


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_silence_grows_while_nothing_arrives_and_ends_with_the_next_byte():
    clock, connection = Clock(), Connection()
    silence = Silence(clock)
    assert silence.seconds(connection) == 0.0
    clock.now += 4
    assert silence.seconds(connection) == 4.0
    connection.bytes_received += 8  # a heartbeat frame
    clock.now += 1
    assert silence.seconds(connection) == 0.0
    clock.now += 2.5
    assert silence.seconds(connection) == 2.5


def test_a_new_connection_starts_from_zero_and_no_connection_is_not_silence():
    clock, first, second = Clock(), Connection(), Connection()
    silence = Silence(clock)
    silence.seconds(first)
    clock.now += 30
    assert silence.seconds(first) == 30.0
    assert silence.seconds(None) == 0.0
    assert silence.seconds(second) == 0.0
    clock.now += 1
    assert silence.seconds(second) == 1.0
