"""The AMQP transport: topology declaration and the link that owns the pika connection."""
