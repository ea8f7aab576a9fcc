"""``fairway scheduler`` with the sink's layout before issue 12 (a benchmark contender).

``python -m benchmarks.processes.plain_scheduler`` runs the real scheduler service with
:class:`PlainSink`: the same decoding, ``insert_many(ordered=False)``, duplicate and
refusal handling as :class:`scheduler.sink.MongoSink`, but no ``w`` field, no rollup
fold or parts and no ``device_state``. ``end_to_end --layouts plain,maintained`` drains
into it and into ``fairway scheduler`` alternately, so issue 12's write cost target
(+20 %) is read on issue 11's measure (CPU per stored reading of every process).
Not for production: nothing reads this layout's history, charts or device page.
"""

from __future__ import annotations

from pymongo.database import Database

from fairway.domain.tenant_watch import RegistryTenants
from fairway.kernel import log
from fairway.kernel.settings import Settings
from fairway.storage import mongo
from scheduler.service import Scheduler
from scheduler.sink import MongoSink, WriteOutcome, _observe_lag


class PlainSink(MongoSink):
    """Telemetry inserts only: what the sink wrote before issue 12."""

    def __init__(self, db: Database) -> None:
        self._collection = db[mongo.TELEMETRY]
        self._batch_documents = False  # one document per reading, as then

    def write(self, bodies: list[bytes]) -> WriteOutcome:
        """Insert every reading of the batch, as :meth:`MongoSink.write` without maintenance."""
        outcome, stored, _duplicates, batches = self.store(bodies, writer=None)
        _observe_lag(stored, batches)  # the lag metric is older than issue 12
        return outcome

    def close(self) -> None:
        """Nothing derived to write."""


def main() -> None:
    """Serve as ``fairway scheduler`` does, with :class:`PlainSink`."""
    settings = Settings.from_env()
    log.setup(settings.log_level)
    db = mongo.connect(settings)
    mongo.ensure_indexes(db)
    Scheduler(settings, PlainSink(db), RegistryTenants(db)).serve(settings.metrics_port)


if __name__ == "__main__":
    main()
