"""The bare-pika floor: a replier with manual acks and publisher confirms, doing no work.

    python replier.py QUEUE PREFETCH
Consumes QUEUE (a quorum queue, like the worker's command queue), publishes each body back to its
reply_to (confirmed), then acks the request."""

from __future__ import annotations

import os
import sys

import pika

AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def main() -> None:
    queue, prefetch = sys.argv[1], int(sys.argv[2])
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    channel.basic_qos(prefetch_count=prefetch)

    def reply(ch, method, properties, body):
        ch.basic_publish("", properties.reply_to, body,
                         pika.BasicProperties(correlation_id=properties.correlation_id, delivery_mode=2,
                                              content_type="application/json"))
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(queue, reply, auto_ack=False)
    print("ready", flush=True)
    channel.start_consuming()


if __name__ == "__main__":
    main()
