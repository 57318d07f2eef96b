"""Operator tools: the command line, doctor, and the dead-letter queue."""
