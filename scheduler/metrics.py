"""Prometheus metrics of the fair scheduler."""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

from scheduler.tenant_histogram import TenantCounter, TenantGauges, TenantHistogram

SCHED_EVENTS = Counter(
    "fairway_scheduler_events_total", "Coalesced telemetry events published by the scheduler"
)


SCHED_EVENTS_DROPPED = Counter(
    "fairway_scheduler_events_dropped_total",
    "Telemetry events not published (publisher connection down or blocked, or a bad batch)",
)


# Plain rows rather than labelled Counters: no labels() lookup per tenant of every batch
# (issue 17: a batch spread over 200 tenants paid it per reading), ~0.7 KB per tenant less.
SCHED_STORED = TenantCounter("fairway_scheduler_stored_total", "Readings written to MongoDB")
REGISTRY.register(SCHED_STORED)


SCHED_DUPLICATES = TenantCounter(
    "fairway_scheduler_duplicates_total",
    "Redelivered readings already stored (duplicate key, acked as done)",
)
REGISTRY.register(SCHED_DUPLICATES)


# stored: written the first time; found_stored: its _id was stored already (a redelivery
# or a batch split across messages), settled by one read of the stored document;
# known_stored: the same, for a document this process stored or read before: the readings
# it does not hold are stored as documents of their own without a failed insert and a read.
SCHED_BATCH_DOCUMENTS = Counter(
    "fairway_scheduler_batch_documents_total",
    "Batch documents (one per device batch and hour) inserted, by outcome",
    ["outcome"],
)


SCHED_DEAD_LETTERED = Counter(
    "fairway_scheduler_dead_lettered_total",
    "Messages the database refused for good, dead-lettered to rejected",
    ["tenant"],
)


SCHED_BUFFERED_READINGS = Gauge(
    "fairway_scheduler_buffered_readings",
    "Readings held in the local DRR buffer, all tenants (bounded by about twice"
    " FAIRWAY_SCHEDULER_BUFFER_READINGS, or one message per tenant where that is more)",
)


SCHED_PREFETCH_READINGS = Gauge(
    "fairway_scheduler_prefetch_readings",
    "Readings the tenants' prefetches allow in all: prefetch x readings per message each"
    " tenant's deliveries carry (full bundles for a tenant not heard from yet)",
)


SCHED_BACKLOG = Gauge(
    "fairway_scheduler_backlog",
    "Messages waiting in the tenant queue at the broker: asked once a second while the"
    " tenant is backlogged (fills its prefetch), 0 otherwise",
    ["tenant"],
)


SCHED_CHANNELS = Gauge(
    "fairway_scheduler_channels", "Channels of the pool open (FAIRWAY_SCHEDULER_CHANNELS at most)"
)


SCHED_CHANNEL_CONSUMERS = Gauge(
    "fairway_scheduler_channel_consumers",
    "Tenant queues consumed on each pooled channel",
    ["channel"],
)


SCHED_DECLARES_WAITING = Gauge(
    "fairway_scheduler_declarations_waiting",
    "Tenant queue declarations waiting for one of the connection's declaration channels"
    " (64 at most in flight, fewer if the broker's channel_max is low)",
)


SCHED_TENANTS = Gauge("fairway_scheduler_tenants", "Tenants known (their queues consumed)")


SCHED_ACTIVE_TENANTS = Gauge(
    "fairway_scheduler_active_tenants",
    "Tenants with deliveries not yet acked (buffered or being written)",
)


SCHED_BACKLOGGED_TENANTS = Gauge(
    "fairway_scheduler_backlogged_tenants",
    "Tenants that filled their prefetch and hold a weighted share of the buffer budget",
)


TENANT_READS = Counter(
    "fairway_scheduler_tenant_reads_total",
    "Reads of the tenant registry by kind: full (every tenant) or changes (since a revision)",
    ["kind"],
)


PREFETCH_CHANGES = Counter(
    "fairway_scheduler_prefetch_changes_total",
    "Consumers recycled to change a tenant channel's prefetch",
    ["tenant"],
)


SCHED_INFLIGHT_BATCHES = Gauge(
    "fairway_scheduler_inflight_batches", "Batches handed to writers and not yet written"
)


SCHED_EXPRESS_BATCHES = Counter(
    "fairway_scheduler_express_batches_total",
    "Express batches written (light tenants only, while every writer was busy)",
)


SCHED_EXPRESS_INFLIGHT = Gauge(
    "fairway_scheduler_express_inflight", "Express batches being written (0 or 1)"
)
SCHED_WRITERS_ALLOWED = Gauge(
    "fairway_scheduler_writers_allowed",
    "Regular batches that may be written at once now (fewer beside light tenants' express batches)",
)
SCHED_LIGHT_ACTIVE = Gauge(
    "fairway_scheduler_light_active",
    "1 while express priority holds regular batches back (FAIRWAY_BATCH_BESIDE_EXPRESS,"
    " FAIRWAY_WRITERS_BESIDE_EXPRESS), else 0",
)


SCHED_BATCH_SIZE = Histogram(
    "fairway_scheduler_batch_size",
    "Readings per write batch",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
)


SCHED_WRITE_SECONDS = Histogram("fairway_scheduler_write_seconds", "Time of one insert_many batch")
SCHED_BATCH_LIMIT = Gauge(
    "fairway_scheduler_batch_limit",
    "Readings a regular write batch may hold now (sized by FAIRWAY_WRITE_BUDGET_MS)",
)


# fairway_scheduler_weight, _buffered and _prefetch{tenant}: read from the scheduler at
# scrape time rather than kept as labelled Gauge children (~3.3 KB per tenant, issue 17).
TENANT_GAUGES = TenantGauges(
    {
        "fairway_scheduler_weight": "The tenant's weight in the DRR, as this scheduler last"
        " read it (Grafana's weight share)",
        "fairway_scheduler_buffered": "Messages held in the local DRR buffer",
        "fairway_scheduler_prefetch": "Prefetch granted to the tenant's channel",
    }
)
REGISTRY.register(TENANT_GAUGES)


LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


# Plain rows rather than a labelled Histogram: ~4.3 KB per tenant less (issue 17).
SCHED_LAG_SECONDS = TenantHistogram(
    "fairway_scheduler_lag_seconds", "From relay receipt to durable write", LAG_BUCKETS
)
REGISTRY.register(SCHED_LAG_SECONDS)


SCHED_DB_UP = Gauge("fairway_scheduler_db_up", "1 when the last database write succeeded")


DEVICE_STATE_PENDING = Gauge(
    "fairway_scheduler_device_state_pending",
    "Devices whose device_state update waits for the next throttled flush",
)


DEVICE_STATE_WRITES = Counter(
    "fairway_scheduler_device_state_writes_total",
    "device_state updates sent, by why: throttled flush, hour (before the ack: a device's"
    " first or last hour moved), overflow (pending table full), failed (retried later)",
    ["why"],
)


ROLLUP_OPEN_CELLS = Gauge(
    "fairway_scheduler_rollup_open_cells",
    "Figures (minute x metric, hour x metric) folded in memory and not written yet",
)


ROLLUP_PARTS_WRITTEN = Counter(
    "fairway_scheduler_rollup_parts_written_total",
    "Hourly rollup parts written from the scheduler's in-memory folds",
)


ROLLUP_HANDED_OVER = Counter(
    "fairway_scheduler_rollup_handed_over_total",
    "Device-hours left to the rollup task (marked pending), by why: duplicate (a"
    " redelivery), late (its hour was already written), spill (folds over the memory bound)",
    ["why"],
)


ROLLUP_WRITE_FAILURES = Counter(
    "fairway_scheduler_rollup_write_failures_total",
    "Failed writes of rollup parts (kept in memory and retried)",
)


SCHED_OLD_ARGUMENTS = Gauge(
    "fairway_scheduler_old_argument_queues",
    "Tenant queues declared by an earlier version with other bounds, consumed as they are",
)


SCHED_TENANTS_REMOVED = Counter(
    "fairway_scheduler_tenants_removed_total",
    "Removed tenants whose consumer this scheduler cancelled (their queues keep what they hold)",
)


SCHED_MALFORMED_OUTCOMES = Counter(
    "fairway_scheduler_malformed_outcomes_total",
    "Batches whose sink answered with a malformed outcome: treated as a failed write"
    " (retried; nothing acked for it)",
)
