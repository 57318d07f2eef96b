"""The bare-pika floor: a replier with manual acks and publisher confirms, doing no work.

    python replier.py QUEUE PREFETCH [POOL VOLUME]
Consumes QUEUE (a quorum queue, like the worker's command queue), publishes each body back to its
reply_to (confirmed), then acks the request. With POOL and VOLUME it first reads that volume's XML
from libvirt (one call on a handle kept from the start): the least a worker answering volume.info
must do, in one thread, with nothing else (no journal, no validation, one publish)."""

from __future__ import annotations

import os
import sys

import pika

AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def main() -> None:
    queue, prefetch = sys.argv[1], int(sys.argv[2])
    volume = None
    if len(sys.argv) > 4:
        import libvirt

        volume = libvirt.open(os.environ.get("BENCH_LIBVIRT_URI", "qemu:///system")) \
            .storagePoolLookupByName(sys.argv[3]).storageVolLookupByName(sys.argv[4])
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    channel.basic_qos(prefetch_count=prefetch)

    def reply(ch, method, properties, body):
        if volume is not None:
            body = volume.XMLDesc(0).encode()
        ch.basic_publish("", properties.reply_to, body,
                         pika.BasicProperties(correlation_id=properties.correlation_id, delivery_mode=2,
                                              content_type="application/json"))
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(queue, reply, auto_ack=False)
    print("ready", flush=True)
    channel.start_consuming()


if __name__ == "__main__":
    main()
