"""Telemetry: Prometheus metrics, the health endpoints and structured logs."""
