from worker.transport.acks import AckBatcher


def batcher(*tags: int) -> AckBatcher:
    acks = AckBatcher()
    for tag in tags:
        acks.delivered(tag)
    return acks


def test_a_settled_run_at_the_front_is_one_multiple_ack():
    acks = batcher(1, 2, 3, 4)
    for tag in (2, 1, 3):
        acks.ack(tag)
    assert acks.flush() == [(3, True)]
    acks.ack(4)
    assert acks.flush() == [(4, False)], "a single delivery needs no multiple"


def test_a_held_delivery_does_not_delay_the_acks_behind_it():
    acks = batcher(1, 2, 3, 4)
    for tag in (2, 4):
        acks.ack(tag)
    assert acks.flush() == [(2, False), (4, False)], "1 is still held: nothing may cover it"
    acks.ack(1)
    assert acks.flush() == [(1, False)]


def test_a_multiple_ack_never_covers_an_open_delivery():
    acks = batcher(1, 2, 3, 4, 5)
    for tag in (1, 2, 4, 5):
        acks.ack(tag)
    assert acks.flush() == [(2, True), (4, False), (5, False)]
    assert not acks.pending


def test_a_nacked_delivery_leaves_the_run():
    acks = batcher(1, 2, 3)
    acks.nacked(2)
    acks.ack(1)
    acks.ack(3)
    assert acks.flush() == [(3, True)], "2 was nacked already: the multiple ack over it settles 1 and 3"


def test_nothing_to_send():
    acks = batcher(1)
    assert acks.flush() == []
    assert not acks.pending
