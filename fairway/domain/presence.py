"""Whether a device is online, and when it was last seen: connections and readings (pure).

Two sources say a device is alive. The monitor records its broker connections
(``devices.online``, ``last_seen``: the time of its last connect or disconnect), and the
scheduler folds every stored reading into ``device_state.last_ts``. A device that shares
a connection (a gateway, a simulator, a service publishing for it) never connects as
itself, so connections alone would show it offline while its readings arrive. Hence:

* **last seen** is the latest of its last connection event and its newest stored
  reading;
* **online** means connected, or a reading within ``window_s``
  (``FAIRWAY_DEVICE_ONLINE_WINDOW_S``).

``last_ts`` is device time: a reading from a clock running fast (within the contract's
``FAIRWAY_MAX_CLOCK_SKEW_S``) would be "seen" in the future, so it counts as seen now.
The pages apply the same rule in the browser (``web/static/presence.js``) as live
readings and status events arrive, and re-evaluate it as time passes, so the dashboard
and the device page agree with each other and with the API.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Presence:
    """A device's state as the pages and the API show it."""

    online: bool
    connected: bool  # an open broker connection (the monitor's view)
    last_seen: datetime | None
    via: str | None  # "connection", "reading" or None (offline)


def presence(
    connected: bool,
    connection_seen: datetime | None,
    last_reading: datetime | None,
    now: datetime,
    window_s: float,
) -> Presence:
    """Combine the monitor's connection state and the newest stored reading."""
    reading_seen = min(last_reading, now) if last_reading is not None else None
    seen = [t for t in (connection_seen, reading_seen) if t is not None]
    recent = reading_seen is not None and (now - reading_seen).total_seconds() <= window_s
    via = "connection" if connected else "reading" if recent else None
    return Presence(connected or recent, connected, max(seen) if seen else None, via)
