"""Alert rules: checking them, evaluation with hysteresis, and the rule cache.

A rule compares one metric of a tenant's devices (or of one device) with a
threshold. It *fires* when the comparison becomes true and *clears* only once the
value is back beyond the threshold by ``hysteresis``: for ``>`` it clears when
``value <= threshold - hysteresis``, for ``>=`` when ``value < threshold - hysteresis``,
for ``<`` when ``value >= threshold + hysteresis``, for ``<=`` when
``value > threshold + hysteresis``. Between the two nothing changes, so a value that
wobbles around the threshold fires once, not on every reading.

Telemetry events are coalesced (one per device per written batch), so a rule sees the
batch's min, max and latest value. From the current state it looks first at the
extreme that could change it (``max`` for ``>``/``>=`` when not firing, ``min`` when
firing; the other way round for ``<``/``<=``), then at the latest value: a spike
inside a batch fires (and clears again if the latest value is back), and after every
event the state agrees with the latest value whenever that value is decisive.

Firing state is kept per (rule, device) in ``alert_state``, so a restarted monitor
neither re-fires nor forgets an alert that is firing.
"""

from __future__ import annotations

import logging
import math
import operator
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo.database import Database

from fairway.domain.coalesce import is_number
from fairway.kernel.ids import check_id, is_valid_id
from fairway.kernel.times import iso_ms
from fairway.storage import registry
from fairway.storage import rules as rule_store

log = logging.getLogger(__name__)


OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
_METRIC = re.compile(r"[A-Za-z0-9_:-]{1,64}")  # the contract's value names


@dataclass(frozen=True, slots=True)
class Rule:
    """An enabled rule as the evaluator needs it."""

    id: str
    tenant: str
    device: str | None  # None: every device of the tenant
    metric: str
    op: str
    threshold: float
    hysteresis: float

    @property
    def rising(self) -> bool:
        """True for ``>``/``>=``: high values fire."""
        return self.op in (">", ">=")

    def fires(self, value: float) -> bool:
        """The comparison holds: a rule that is not firing starts firing."""
        return OPS[self.op](value, self.threshold)

    def clears(self, value: float) -> bool:
        """The value is back beyond the threshold by the hysteresis."""
        shifted = (
            self.threshold - self.hysteresis if self.rising else self.threshold + self.hysteresis
        )
        return not OPS[self.op](value, shifted)

    def applies_to(self, device: str) -> bool:
        """True if the rule watches ``device``."""
        return self.device is None or self.device == device

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Rule:
        """From a ``rules`` document."""
        return cls(
            doc["_id"],
            doc["tenant"],
            doc.get("device"),
            doc["metric"],
            doc["op"],
            float(doc["threshold"]),
            float(doc.get("hysteresis", 0.0)),
        )


# -- evaluation (pure) -------------------------------------------------------------
def step(rule: Rule, firing: bool, value: float) -> bool:
    """The state after ``value``."""
    if firing:
        return not rule.clears(value)
    return rule.fires(value)


def transitions(rule: Rule, firing: bool, values: Iterable[float]) -> list[tuple[bool, float]]:
    """Each change of state over ``values``: (new state, the value that caused it)."""
    out = []
    for value in values:
        now = step(rule, firing, value)
        if now != firing:
            out.append((now, value))
            firing = now
    return out


def evaluate_event(rule: Rule, firing: bool, event: dict[str, Any]) -> list[tuple[bool, float]]:
    """State changes of ``rule`` caused by one coalesced telemetry event, in order.

    First the batch's extreme that could change the current state, then the latest
    value (see the module doc). Metrics that are absent or not numbers change nothing.
    """
    extremes = event.get("max" if rule.rising != firing else "min") or {}
    offered = (extremes.get(rule.metric), (event.get("values") or {}).get(rule.metric))
    return transitions(rule, firing, [v for v in offered if v is not None and is_number(v)])


def alert_event(rule: Rule, device: str, firing: bool, value: float, at: str) -> dict[str, Any]:
    """The ``alert.<tenant>.<device>`` body."""
    return {
        "kind": "alert",
        "tenant": rule.tenant,
        "device": device,
        "rule": rule.id,
        "metric": rule.metric,
        "op": rule.op,
        "threshold": rule.threshold,
        "value": value,
        "state": "firing" if firing else "cleared",
        "at": at,
    }


def alert_key(tenant: str, device: str) -> str:
    """``alert.<tenant>.<device>``."""
    return f"alert.{tenant}.{device}"


class AlertEngine:
    """Evaluates telemetry events against rules; holds the firing state in memory.

    ``firing`` maps ``(rule id, device)`` to True for every alert that is firing.
    """

    def __init__(self, firing: set[tuple[str, str]] | None = None) -> None:
        self.firing: set[tuple[str, str]] = set(firing or ())

    def on_event(self, rules: Iterable[Rule], event: dict[str, Any]) -> list[dict[str, Any]]:
        """Alert events (firing or cleared) caused by one telemetry event, in order."""
        device = event["device"]
        out = []
        for rule in rules:
            if rule.tenant != event["tenant"] or not rule.applies_to(device):
                continue
            key = (rule.id, device)
            for now, value in evaluate_event(rule, key in self.firing, event):
                if now:
                    self.firing.add(key)
                else:
                    self.firing.discard(key)
                out.append(alert_event(rule, device, now, value, event.get("ts") or _now()))
        return out


def _now() -> str:
    return iso_ms(datetime.now(UTC))


# -- creating rules ----------------------------------------------------------------
def create_rule(
    db: Database,
    tenant: str,
    device: str | None,
    metric: object,
    op: object,
    threshold: object,
    hysteresis: object,
    max_rules: int | None = None,
) -> dict[str, Any]:
    """Store an enabled rule and return its document; ValueError on bad input.

    ``metric``, ``op``, ``threshold`` and ``hysteresis`` are checked here, so they may
    come straight from a request body. With ``max_rules``, a tenant that has that many
    rules already gets :class:`TooManyRules` (concurrent creations may pass it by a few).
    """
    check_id("tenant", tenant)
    if max_rules is not None and rule_store.count_rules(db, tenant) >= max_rules:
        raise TooManyRules(
            f"tenant {tenant!r} has {max_rules} alert rules, the most allowed; delete one first"
        )
    if device is not None:
        if not isinstance(device, str) or not is_valid_id(device):
            raise ValueError(f"device {device!r} is not a valid device id")
        owner = registry.device_document(db, device)
        if owner is None or owner.get("tenant") != tenant:
            raise ValueError(f"device {device!r} is not a device of tenant {tenant!r}")
    if not isinstance(metric, str) or _METRIC.fullmatch(metric) is None:
        raise ValueError(f"metric {metric!r} must be 1-64 characters of [A-Za-z0-9_:-]")
    if op not in OPS:
        raise ValueError(f"op {op!r} must be one of {', '.join(OPS)}")
    threshold = _finite("threshold", threshold)
    hysteresis = _finite("hysteresis", hysteresis)
    if hysteresis < 0:
        raise ValueError("hysteresis must be zero or more")
    doc = {
        "_id": uuid.uuid4().hex,
        "tenant": tenant,
        "device": device,
        "metric": metric,
        "op": op,
        "threshold": threshold,
        "hysteresis": hysteresis,
        "enabled": True,
        "created": datetime.now(UTC),
    }
    rule_store.insert_rule(db, doc)
    return doc


class TooManyRules(ValueError):
    """The tenant has ``FAIRWAY_MAX_RULES_PER_TENANT`` rules already."""

    reason = "too_many_rules"


def _finite(name: str, value: object) -> float:
    try:
        number = float(value) if is_number(value) else math.nan  # type: ignore[arg-type]
    except OverflowError:  # an integer beyond a double
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number")
    return number


class RuleCache:
    """Enabled rules by tenant, re-read at most every ``ttl_s``; stale while the DB is down."""

    def __init__(
        self, db: Database, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._db, self._ttl, self._clock = db, ttl_s, clock
        self._rules: dict[str, list[Rule]] = {}
        self._loaded_at = -math.inf
        self._lock = threading.Lock()

    def rules(self, tenant: str) -> list[Rule]:
        """The tenant's enabled rules."""
        with self._lock:
            if self._clock() - self._loaded_at >= self._ttl:
                self._reload()
            return self._rules.get(tenant, [])

    def _reload(self) -> None:
        try:
            docs = rule_store.enabled_rules(self._db)
        except Exception as exc:
            log.warning("rules could not be read; using the last ones", extra={"error": repr(exc)})
            self._loaded_at = self._clock()  # try again after the TTL, not on every event
            return
        rules: dict[str, list[Rule]] = {}
        for doc in docs:
            try:
                rule = Rule.from_document(doc)
            except (KeyError, TypeError, ValueError):
                log.warning("ignoring a malformed rule", extra={"rule": str(doc.get("_id"))})
                continue
            if rule.op in OPS:
                rules.setdefault(rule.tenant, []).append(rule)
        self._rules = rules
        self._loaded_at = self._clock()
