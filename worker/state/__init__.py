"""State kept by the worker: the command journal (with the event outbox) and the inventory of pools and volumes."""
