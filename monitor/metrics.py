"""Prometheus metrics of the monitor (device status and alerts)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

STATUS_EVENTS = Counter(
    "fairway_monitor_status_events_total", "Device status changes published", ["online"]
)


ALERT_EVENTS = Counter(
    "fairway_monitor_alert_events_total", "Alert transitions published", ["state"]
)


EVALUATED = Counter("fairway_monitor_telemetry_events_total", "Telemetry events evaluated")


MALFORMED = Counter(
    "fairway_monitor_malformed_events_total", "Telemetry events skipped: not a scheduler event"
)


DROPPED = Counter(
    "fairway_monitor_events_dropped_total",
    "Status or alert events not published (publisher down or blocked)",
)


IGNORED = Counter(
    "fairway_monitor_ignored_connections_total",
    "Connections to this vhost by users that are not registered devices",
)


ONLINE = Gauge("fairway_monitor_devices_online", "Devices with at least one open connection")


PENDING = Gauge(
    "fairway_monitor_pending",
    "Deliveries received and not yet handled (bounded by prefetch)",
    ["feed"],
)


BACKLOG = Gauge("fairway_monitor_backlog", "Telemetry events waiting in monitor.telemetry")
