"""Run the Faust stream worker in the foreground."""

from __future__ import annotations

import logging

from ecrec_stream.config import Settings
from ecrec_stream.exceptions import ConfigError
from streams.kafka import all_topics, ensure_topics, topic_partitions
from streams.process import use_event_loop

LOG = logging.getLogger(__name__)


def check_partitions(bootstrap: str, settings: Settings) -> None:
    """Each ``valid_*`` topic must have as many partitions as its input topic (batches keep
    their partition number)."""
    for source, valid in settings.topics.routes().values():
        n_source, n_valid = (
            len(topic_partitions(bootstrap, source)),
            len(topic_partitions(bootstrap, valid)),
        )
        if n_source != n_valid:
            raise ConfigError(
                f"topic {valid} has {n_valid} partitions but {source} has {n_source}; "
                "they must match"
            )


def run_worker(settings: Settings, bootstrap: str, loglevel: str = "warning") -> None:
    """Create missing topics, then run the Faust worker until it is stopped (SIGTERM/SIGINT)."""
    use_event_loop(settings)
    import faust

    from streams.app import create_app

    ensure_topics(bootstrap, all_topics(settings.topics), settings.partitions)
    check_partitions(bootstrap, settings)
    app = create_app(settings, bootstrap)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    # Faust's terminal spinner sets the root logger to DEBUG (so that every log call turns it),
    # and every aiokafka and Faust debug call then builds a record that no handler prints:
    # ~5% of a busy worker's CPU (bench.throughput --paced --profile). No spinner, no DEBUG.
    worker.spinner = None
    worker.execute_from_commandline()
