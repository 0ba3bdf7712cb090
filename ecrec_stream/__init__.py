"""ecrec-stream: keep e-commerce search and recommendation models fresh from live traffic.

This package is the pure domain library: event contracts, validation, embedding, the item
index and its persistence. It imports no Kafka or Faust code; ``streams/`` wires it to topics
and agents and ``workers/`` runs the other long-running processes.
"""

__version__ = "0.1.0"
