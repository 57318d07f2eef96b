"""The AMQP transport: the link that owns the broker connection, acknowledgements, the topology, and
publishing results and events."""
