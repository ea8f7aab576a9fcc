"""Bulk provisioning: many tenants and their devices in one batch, over one broker connection.

Single provisioning (:mod:`fairway.provision`) opens a connection and declares the whole
shared topology for every tenant; a batch opens one connection, declares the shared
topology once, then only what each tenant needs (``ingest.<tenant>``, ``tenant.<tenant>``
and its binding, the same arguments as :func:`fairway.provision.provision_tenant`), and
reads and writes the registry a chunk of ids at a time.

The order per tenant is that of single provisioning, so a batch cut short (a crash, a
lost connection) is finished by running it again: queues before the tenant record,
device records before their bindings. A batch is idempotent: what exists is reported as
``exists`` and left as it is (an existing tenant keeps its weight); an existing device of
the same tenant is bound again (repairing a binding a cut-short batch did not make).

Every item gets a result (``created``, ``exists`` or ``refused``) and refusals a stable
reason code (:data:`REASONS`); one refused item does not stop the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import Annotated, Any, Literal

import pika
import pika.exceptions
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field
from pymongo.database import Database

from fairway.amqp.connection import Brokers, open_blocking
from fairway.kernel import topology
from fairway.kernel.ids import ID_PATTERN, RESERVED_ID, ReservedIdError, check_new_id
from fairway.kernel.settings import Settings
from fairway.storage import mongo, registry

log = logging.getLogger(__name__)

MAX_WEIGHT = 1000
MAX_BACKLOG = 1_000_000_000
# A tenant's plan (ingest/ratelimit.py TenantRates): readings per second (0: unlimited)
# and burst; absent: FAIRWAY_TENANT_RATE / FAIRWAY_TENANT_BURST.
MaxRate = Annotated[float, Field(ge=0, le=registry.MAX_TENANT_RATE, allow_inf_nan=False)]
MaxBurst = Annotated[float, Field(ge=1, le=registry.MAX_TENANT_BURST, allow_inf_nan=False)]
RATE_HELP = "accepted readings per second in each relay, 0: unlimited (default FAIRWAY_TENANT_RATE)"
BURST_HELP = "burst of max_rate, in readings (default FAIRWAY_TENANT_BURST)"
# Ids per registry insert: FerretDB prefers small bulks.
DB_CHUNK = 200
# Ids per existence query (``$in``): FerretDB 1.24 does not push ``$in`` down to
# PostgreSQL, so each query scans the whole collection (1.2 s for 200 ids, 1.75 s for
# 1,000 among 10,000 records on the loaded test machine): one query per batch of the
# default size, not five.
READ_CHUNK = 1000
# Tenants (or devices) whose declarations are sent on one channel before waiting for the
# broker.
PIPELINE_CHUNK = 100
# Channels declaring side by side (docs/architecture.md, "Bulk provisioning"): 4 already
# cut a 2,000-queue declaration's time 3-4x on a 2-core node; more add little.
CHANNELS = 8

Result = Literal["created", "exists", "refused"]
CREATED: Result = "created"
EXISTS: Result = "exists"
REFUSED: Result = "refused"
# Reason codes of refused items (stable; documented in docs/architecture.md).
DUPLICATE = "duplicate"  # named twice in the batch: the first one counts
TAKEN = "exists"  # a device id registered under another tenant
TENANT_REFUSED = "tenant_refused"  # a device whose tenant was refused in this batch
QUEUE_MISMATCH = "queue_mismatch"  # the broker holds the queue with other arguments
REASONS = (RESERVED_ID, DUPLICATE, TAKEN, TENANT_REFUSED, QUEUE_MISMATCH)

PROVISIONED = Counter(
    "fairway_provisioned_total",
    "Tenants and devices of bulk provisioning batches, by kind and result",
    ["kind", "result"],
)
BATCHES = Counter("fairway_provision_batches_total", "Bulk provisioning batches run")

Declaration = Callable[[Any], None]  # sends AMQP methods on the channel it is given
DeviceId = Annotated[str, Field(pattern=ID_PATTERN)]


class TenantItem(BaseModel):
    """One tenant of a batch and the devices to register under it."""

    model_config = ConfigDict(strict=True, extra="forbid")

    tenant: Annotated[str, Field(pattern=ID_PATTERN)]
    weight: Annotated[int, Field(ge=1, le=MAX_WEIGHT)] = 1
    max_backlog: Annotated[int, Field(ge=1, le=MAX_BACKLOG)] | None = Field(
        None, description="default FAIRWAY_TENANT_MAX_BACKLOG"
    )
    max_rate: MaxRate | None = Field(None, description=RATE_HELP)
    max_burst: MaxBurst | None = Field(None, description=BURST_HELP)
    devices: list[DeviceId] = Field(
        default_factory=list, description="device ids to register under the tenant"
    )


class Batch(BaseModel):
    """A batch as sent to the API or read from a file (``fairway tenant create-many``)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    tenants: list[TenantItem]


@dataclass
class Outcome:
    """What became of one tenant or device of a batch."""

    tenant: str
    result: Result
    reason: str | None = None
    message: str | None = None
    device: str | None = None
    password: str | None = None  # a created device's, shown once

    def as_json(self) -> dict[str, Any]:
        """The API's and the CLI's form (a device's ``username`` is its id)."""
        out: dict[str, Any] = {"tenant": self.tenant}
        if self.device is not None:
            out["device"] = self.device
            out["username"] = self.device if self.password else None
            out["password"] = self.password
        return {**out, "result": self.result, "reason": self.reason, "message": self.message}


@dataclass
class Report:
    """The outcome of every tenant and device of one or more batches, in input order."""

    tenants: list[Outcome] = field(default_factory=list)
    devices: list[Outcome] = field(default_factory=list)

    def counts(self) -> dict[str, dict[str, int]]:
        """``{"tenants": {"created": n, "exists": n, "refused": n}, "devices": {...}}``."""
        return {kind: _count(outcomes) for kind, outcomes in self._kinds()}

    def extend(self, other: Report) -> None:
        """Append another batch's outcomes."""
        self.tenants.extend(other.tenants)
        self.devices.extend(other.devices)

    def as_json(self) -> dict[str, Any]:
        """Counts first, then every outcome."""
        return {
            "counts": self.counts(),
            "tenants": [o.as_json() for o in self.tenants],
            "devices": [o.as_json() for o in self.devices],
        }

    def _kinds(self) -> tuple[tuple[str, list[Outcome]], ...]:
        return (("tenants", self.tenants), ("devices", self.devices))


def _count(outcomes: list[Outcome]) -> dict[str, int]:
    counts: dict[str, int] = dict.fromkeys((CREATED, EXISTS, REFUSED), 0)
    for outcome in outcomes:
        counts[outcome.result] += 1
    return counts


class BatchTooLarge(ValueError):
    """More tenants or devices than ``FAIRWAY_PROVISION_BATCH_MAX`` in one batch."""


def check_batch_size(items: Sequence[TenantItem], most: int) -> None:
    """Raise :class:`BatchTooLarge` unless the batch holds at most ``most`` tenants and
    at most ``most`` devices."""
    devices = sum(len(item.devices) for item in items)
    if len(items) > most or devices > most:
        raise BatchTooLarge(
            f"a batch holds at most {most} tenants and {most} devices"
            f" (FAIRWAY_PROVISION_BATCH_MAX); this one has {len(items)} and {devices}"
        )


def split_batches(items: Sequence[TenantItem], most: int) -> Iterator[list[TenantItem]]:
    """Consecutive batches of at most ``most`` tenants and ``most`` devices each.

    A tenant listing more than ``most`` devices cannot be placed: :class:`BatchTooLarge`.
    """
    batch: list[TenantItem] = []
    devices = 0
    for item in items:
        if len(item.devices) > most:
            raise BatchTooLarge(
                f"tenant {item.tenant!r} lists {len(item.devices)} devices, more than one"
                f" batch holds ({most}, FAIRWAY_PROVISION_BATCH_MAX): list it again with the rest"
            )
        if batch and (len(batch) == most or devices + len(item.devices) > most):
            yield batch
            batch, devices = [], 0
        batch.append(item)
        devices += len(item.devices)
    if batch:
        yield batch


def _chunks(values: Sequence[Any], size: int = DB_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


class BulkProvisioner:
    """One broker connection (its :data:`CHANNELS` channels) for any number of batches (a
    context manager).

    ``with BulkProvisioner(settings, db) as bulk: report = bulk.provision(items)``
    """

    def __init__(self, settings: Settings, db: Database, name: str = "fairway-provision") -> None:
        self.settings, self.db, self.name = settings, db, name
        self._connection: pika.BlockingConnection | None = None
        self._channels: list[Any] = []

    def __enter__(self) -> BulkProvisioner:
        # The first broker of FAIRWAY_AMQP_URL that answers (a cluster's nodes in order).
        self._connection = open_blocking(Brokers(self.settings, self.name))
        self._channels = [self._connection.channel() for _ in range(CHANNELS)]
        topology.declare(self._channels[0], self.settings)  # once for every batch
        mongo.ensure_indexes(self.db)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._connection is not None and self._connection.is_open:
            self._connection.close()
        self._connection, self._channels = None, []

    def provision(self, items: Sequence[TenantItem]) -> Report:
        """Provision one batch (at most ``provision_batch_max`` tenants and devices)."""
        check_batch_size(items, self.settings.provision_batch_max)
        tenants = self._tenants(items)
        return _counted(Report(tenants=tenants, devices=self._devices(items, tenants)))

    def register_devices(self, tenant: str, devices: Sequence[str]) -> Report:
        """Register ``devices`` under ``tenant``, which the caller knows exists (one batch;
        the report holds devices only)."""
        items = [TenantItem.model_validate({"tenant": tenant, "devices": list(devices)})]
        check_batch_size(items, self.settings.provision_batch_max)
        return _counted(Report(devices=self._devices(items, [Outcome(tenant, EXISTS)])))

    # -- tenants -----------------------------------------------------------------------
    def _tenants(self, items: Sequence[TenantItem]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        seen: set[str] = set()
        for item in items:
            outcomes.append(_check_new("tenant", item.tenant, item.tenant, seen))
        wanted = [o.tenant for o in outcomes if o.result == CREATED]
        found: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(wanted, READ_CHUNK):
            found |= registry.existing(self.db, mongo.TENANTS, list(chunk))
        records: list[dict[str, Any]] = []
        for item, outcome in zip(items, outcomes, strict=True):
            if outcome.result != CREATED:
                continue
            if item.tenant in found:
                _exists(outcome, f"tenant {item.tenant!r} exists")
                continue
            backlog = item.max_backlog or self.settings.tenant_max_backlog
            records.append(
                registry.tenant_record(
                    item.tenant,
                    item.weight,
                    backlog,
                    max_rate=item.max_rate,
                    max_burst=item.max_burst,
                )
            )
        problems = self._declare_all(
            [(r["_id"], self._tenant_queues(r["_id"], r["max_backlog"])) for r in records]
        )
        for outcome in outcomes:
            if outcome.result == CREATED and outcome.tenant in problems:
                _refuse(outcome, QUEUE_MISMATCH, problems[outcome.tenant])
        records = [r for r in records if r["_id"] not in problems]
        taken: set[str] = set()
        for chunk in _chunks(records):
            # A revision per chunk, taken just before it is written: a scheduler trusts a
            # revision once it is a few seconds old, so one taken for a long batch would
            # hide its later chunks until the full resync.
            rev = registry.next_tenants_rev(self.db)
            for record in chunk:
                record["rev"] = rev
            taken |= registry.insert_new(self.db, mongo.TENANTS, list(chunk))
        for outcome in outcomes:
            if outcome.result == CREATED and outcome.tenant in taken:  # a concurrent creator
                _exists(outcome, f"tenant {outcome.tenant!r} exists")
        return outcomes

    def _tenant_queues(self, tenant: str, max_backlog: int) -> list[Declaration]:
        """What a tenant needs: ``ingest.<tenant>``, ``tenant.<tenant>`` and its binding."""
        return [
            topology.tenant_ingest_queue(tenant, self.settings).declare,
            topology.tenant_queue(tenant, max_backlog, self.settings).declare,
        ]

    def _declare_all(self, work: list[tuple[str, list[Declaration]]]) -> dict[str, str]:
        """Run each key's declarations; the broker's refusal per key (a sentence).

        Pipelined and spread: a chunk of keys per channel is sent on each of the
        connection's :data:`CHANNELS` channels without waiting for each answer
        (``nowait``), then one synchronous call per channel waits for the broker to have
        done them all. The broker runs each channel in a process of its own, so the
        channels' queue creations overlap (a durable queue or binding waits for its
        Mnesia commit; one channel alone spends more time waiting than working). A
        key's declarations stay on one channel, in order. A chunk the broker refused (it
        closes that channel) is run again one key at a time, waiting for each, to tell
        which key it was: declarations are idempotent.
        """
        problems: dict[str, str] = {}
        for group in _chunks(work, PIPELINE_CHUNK * len(self._channels)):
            chunks = list(_chunks(group, PIPELINE_CHUNK))
            refused: list[int] = []
            for k, chunk in enumerate(chunks):
                try:
                    # pika's blocking channel has no nowait; its underlying channel sends
                    # these methods with nowait when no callback is given.
                    for _key, declarations in chunk:
                        for declare in declarations:
                            declare(self._channels[k]._impl)
                except pika.exceptions.ChannelWrongStateError:  # closed while we were sending
                    refused.append(k)
            for k in range(len(chunks)):
                if k in refused:
                    continue
                try:
                    self._channels[k].basic_qos(prefetch_count=0)  # a round trip after them
                except (
                    pika.exceptions.ChannelClosedByBroker,
                    pika.exceptions.ChannelWrongStateError,
                ):
                    refused.append(k)
            for k in refused:
                self._reopen(k)
                for key, declarations in chunks[k]:
                    try:
                        for declare in declarations:
                            declare(self._channels[k])
                    except pika.exceptions.ChannelClosedByBroker as exc:
                        self._reopen(k)
                        problems[key] = f"the broker refused {key!r}: {exc.reply_text}"
        return problems

    def _reopen(self, k: int) -> None:
        """A channel error closes the channel, not the connection: open another one."""
        assert self._connection is not None, "use BulkProvisioner as a context manager"
        self._channels[k] = self._connection.channel()

    # -- devices -----------------------------------------------------------------------
    def _devices(self, items: Sequence[TenantItem], tenants: list[Outcome]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        seen: set[str] = set()
        for item, tenant in zip(items, tenants, strict=True):
            for device in item.devices:
                if tenant.result == REFUSED:
                    outcomes.append(
                        _refused(
                            item.tenant,
                            TENANT_REFUSED,
                            f"tenant {item.tenant!r} was refused ({tenant.reason})",
                            device,
                        )
                    )
                    continue
                outcomes.append(_check_new("device", item.tenant, device, seen))
        wanted = [o.device for o in outcomes if o.result == CREATED and o.device]
        found: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(wanted, READ_CHUNK):
            found |= registry.existing(self.db, mongo.DEVICES, list(chunk))
        key = registry.device_hash_key(self.settings.device_hash_key, self.settings.secret_key)
        records: list[dict[str, Any]] = []
        for outcome in outcomes:
            if outcome.result != CREATED or outcome.device is None:
                continue
            doc = found.get(outcome.device)
            if doc is not None:
                _device_exists(outcome, doc["tenant"])
                continue
            record, credentials = registry.device_record(outcome.tenant, outcome.device, key)
            records.append(record)
            outcome.password = credentials["password"]
        taken: set[str] = set()
        for chunk in _chunks(records):
            taken |= registry.insert_new(self.db, mongo.DEVICES, list(chunk))
        for outcome in outcomes:
            if outcome.result == CREATED and outcome.device in taken:  # a concurrent creator
                outcome.password = None
                _refuse(outcome, TAKEN, f"device {outcome.device!r} exists")
        self._bind([o for o in outcomes if o.result in (CREATED, EXISTS)])
        return outcomes

    def _bind(self, outcomes: list[Outcome]) -> None:
        """Bind each device (its tenant's ingest queue declared first).

        As in single registration, a device whose binding fails stays registered (its
        messages take the shared ``ingest``); the batch run again binds it.
        """
        work: list[tuple[str, list[Declaration]]] = []
        declared: set[str] = set()
        for outcome in outcomes:
            assert outcome.device is not None
            steps: list[Declaration] = []
            if outcome.tenant not in declared:
                steps.append(topology.tenant_ingest_queue(outcome.tenant, self.settings).declare)
                declared.add(outcome.tenant)
            steps.append(partial(_bind_device, tenant=outcome.tenant, device=outcome.device))
            work.append((outcome.device, steps))
        problems = self._declare_all(work)
        for outcome in outcomes:
            problem = problems.get(outcome.device or "")
            if problem:
                outcome.message = f"registered but not bound ({problem}); run it again"
                log.warning(
                    "device registered but not bound",
                    extra={"tenant": outcome.tenant, "device": outcome.device},
                )


def _bind_device(channel: Any, tenant: str, device: str) -> None:
    topology.bind_device(channel, tenant, device)


def _counted(report: Report) -> Report:
    BATCHES.inc()
    for kind, outcomes in report._kinds():
        for outcome in outcomes:
            PROVISIONED.labels(kind, outcome.result).inc()
    return report


def _check_new(kind: str, tenant: str, value: str, seen: set[str]) -> Outcome:
    """``created`` (so far) unless ``value`` is reserved or already named in the batch."""
    device = value if kind == "device" else None
    if value in seen:
        return _refused(tenant, DUPLICATE, f"{kind} {value!r} is named twice", device)
    seen.add(value)
    try:
        check_new_id(kind, value)
    except ReservedIdError as exc:
        return _refused(tenant, RESERVED_ID, str(exc), device)
    return Outcome(tenant, CREATED, device=device)


def _refused(tenant: str, reason: str, message: str, device: str | None = None) -> Outcome:
    return Outcome(tenant, REFUSED, reason, message, device)


def _refuse(outcome: Outcome, reason: str, message: str) -> None:
    outcome.result, outcome.reason, outcome.message = REFUSED, reason, message


def _exists(outcome: Outcome, message: str) -> None:
    outcome.result, outcome.message = EXISTS, message


def _device_exists(outcome: Outcome, owner: str) -> None:
    if owner == outcome.tenant:
        _exists(outcome, f"device {outcome.device!r} exists")
    else:
        _refuse(outcome, TAKEN, f"device {outcome.device!r} exists under another tenant")


def provision_many(
    settings: Settings,
    db: Database,
    items: Sequence[TenantItem],
    progress: Callable[[Report, int], None] | None = None,
) -> Report:
    """Provision ``items`` in batches of ``provision_batch_max`` over one connection;
    ``progress(report_so_far, total_tenants)`` is called after each batch."""
    report = Report()
    with BulkProvisioner(settings, db) as bulk:
        for batch in split_batches(items, settings.provision_batch_max):
            report.extend(bulk.provision(batch))
            if progress is not None:
                progress(report, len(items))
    return report
