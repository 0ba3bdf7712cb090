"""Kafka and Faust wiring: the embedded broker, client settings, topics and the stream worker."""
