"""Counters and latencies of the engine, for Prometheus and the JSON metrics endpoint."""
