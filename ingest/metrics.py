"""Prometheus metrics of the auth/relay consumer."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RELAY_ACCEPTED = Counter(
    "fairway_relay_accepted_total",
    "Readings accepted and confirmed into a tenant queue",
    ["tenant"],
)


RELAY_REJECTED = Counter(
    "fairway_relay_rejected_total", "Messages refused and confirmed into rejected", ["reason"]
)


RELAY_TENANT_RATE_LIMITED = Counter(
    "fairway_relay_tenant_rate_limited_total",
    "Readings refused as tenant_rate_limited (beyond the tenant's accepted-reading rate in"
    " this relay), by tenant: kept in rejected or not, within the refusal budgets; a"
    " message refused before it was read counts as one reading",
    ["tenant"],
)


RELAY_REFUSED_UNREAD = Counter(
    "fairway_relay_refused_unread_total",
    "Messages refused whole before their body was read (tenant_rate_limited: the tenant's"
    " plan bucket held no whole token, or was dry and below its opening level), by tenant"
    " and reason; each also counts as one reading wherever refusals are counted",
    ["tenant", "reason"],
)


RELAY_REJECTED_DROPPED = Counter(
    "fairway_relay_rejected_dropped_total",
    "Refused messages that the full rejected queue did not take (counted, then acked)",
    ["reason"],
)


DEVICES_QUARANTINED = Counter(
    "fairway_devices_quarantined_total",
    "Devices quarantined for refusals beyond their budget (connections closed, logins"
    " refused for a period), by tenant",
    ["tenant"],
)
QUARANTINE_CLOSES = Counter(
    "fairway_relay_quarantine_closes_total",
    "Attempts to close a quarantined device's broker connections, by outcome (closed, failed)",
    ["outcome"],
)
QUARANTINE_CONNECTED_CHECKS = Counter(
    "fairway_relay_quarantine_connected_checks_total",
    "Whether a device refused beyond its bucket is connected, by how it was answered: asked"
    " (a management-API call), cached (a recent answer that it was not), limited (no call"
    " left in the quarantiner's budget: not acted on now)",
    ["answer"],
)
QUARANTINE_MGMT_CALLS = Counter(
    "fairway_relay_quarantine_mgmt_calls_total",
    "The quarantine's management-API calls that close a quarantined device's connections"
    " (close: the worker's, at a new quarantine or a held one's later refusals; sweep_close)"
    " or find which swept devices are connected (list), by answer: asked (made),"
    " limited (no call left in the relay's budget: the device waits for a later sweep or"
    " refusal)",
    ["call", "answer"],
)
QUARANTINE_SWEPT = Gauge(
    "fairway_relay_quarantine_swept",
    "Devices whose reconnects the relay's quarantine sweep closes now (bounded by"
    " ingest.quarantine.SWEEP_MAX_DEVICES)",
)
QUARANTINE_CONNECTED_CACHED = Gauge(
    "fairway_relay_quarantine_connected_cached",
    "Devices with a 'not connected' answer the quarantiner holds, recent or expired (bounded by"
    " FAIRWAY_DEVICE_CACHE_SIZE)",
)
RELAY_REJECTED_OVER_BUDGET = Counter(
    "fairway_relay_rejected_over_budget_total",
    "Refused messages beyond their device's or tenant's refusal budget (counted, acked, not kept)",
    ["tenant", "reason"],
)


RELAY_REFUSED_PACED = Counter(
    "fairway_relay_refused_paced_total",
    "Refused deliveries over the refusal budgets whose ack was held back to"
    " FAIRWAY_RELAY_REFUSED_PACE per ingest queue",
    ["tenant"],
)


RELAY_REFUSED_HELD = Gauge(
    "fairway_relay_refused_held",
    "Refused deliveries held unacked by the refusal pace (at most a prefetch per queue)",
)


RELAY_UNCONFIRMED = Gauge(
    "fairway_relay_unconfirmed", "Republished messages awaiting the broker's confirm"
)


RELAY_PARKED = Gauge("fairway_relay_parked", "Deliveries waiting for a device registry look-up")


RELAY_HELD = Gauge(
    "fairway_relay_held", "Deliveries received and not yet acked (every queue the relay consumes)"
)


RELAY_TENANT_QUEUES = Gauge(
    "fairway_relay_tenant_queues", "Tenant ingest queues (ingest.<tenant>) this relay consumes"
)


RELAY_TENANT_READS = Counter(
    "fairway_relay_tenant_reads_total",
    "Reads of the tenant registry by kind: full (every tenant) or changes (since a revision)",
    ["kind"],
)


RELAY_PREFETCH_BOUND = Gauge(
    "fairway_relay_prefetch_bound",
    "Most deliveries the broker may hand this relay at once: "
    "relay_prefetch + tenant queues x relay_tenant_prefetch",
)


RELAY_BATCH_READINGS = Histogram(
    "fairway_relay_batch_readings",
    "Readings per device batch (messages carrying an array of readings)",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)


RELAY_BUNDLE_READINGS = Histogram(
    "fairway_relay_bundle_readings",
    "Readings per bundle published to a tenant queue",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)


RELAY_BUNDLE_BYTES = Histogram(
    "fairway_relay_bundle_bytes",
    "Bytes per bundle body published to a tenant queue",
    buckets=(256, 1024, 4096, 16384, 32768, 65536, 131072),
)


RELAY_NACK_RETRIES = Counter(
    "fairway_relay_nack_retries_total",
    "Bundles a tenant queue nacked, published again (full, or a quorum leader lost)",
    ["tenant"],
)
RELAY_BUNDLE_FLUSHES = Counter(
    "fairway_relay_bundle_flushes_total",
    "Bundles published, by what closed them: count, bytes, linger or drain",
    ["cause"],
)


RELAY_BATCHES_SPLIT = Counter(
    "fairway_relay_batches_split_total",
    "Device batches whose accepted readings went into several bundles: one bundle would"
    " have exceeded FAIRWAY_BROKER_MAX_MESSAGE_BYTES (the sink stores the rest on their own)",
    ["tenant"],
)


RELAY_BUNDLED = Gauge(
    "fairway_relay_bundled_readings",
    "Accepted readings waiting in open bundles (not yet published)",
)
