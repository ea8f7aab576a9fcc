/* Device presence in the browser, as pure functions (no DOM): the same rule as the API
   (fairway/domain/presence.py). Last seen is the latest of the last connection event and
   the newest stored reading (a reading from a fast clock counts as seen now); online
   means connected, or a reading within the window (FAIRWAY_DEVICE_ONLINE_WINDOW_S).
   The dashboard and the device page keep one state per device, fold live events into
   it, and re-evaluate it as time passes, so a silent device goes offline on both.
   Loaded by the browser as a plain script (window.FairwayPresence) and by node's test
   runner through require (tests/js/presence.test.mjs). */
(function (root) {
  "use strict";

  const ms = (iso) => (iso ? Date.parse(iso) : null);
  const later = (a, b) => (a === null ? b : b === null ? a : Math.max(a, b));

  /* A device's state from the API's device JSON (times as epoch milliseconds). */
  function fromDevice(d) {
    return { connected: !!d.connected, lastSeen: ms(d.last_seen), lastReading: ms(d.last_reading) };
  }

  /* Fold a live event into the state (returns a new state): a telemetry event is a
     stored reading at its device time; a status event is a connection opening/closing. */
  function apply(state, event) {
    if (event.kind === "telemetry") {
      return { ...state, lastReading: later(state.lastReading, ms(event.ts)) };
    }
    if (event.kind === "status") {
      return { ...state, connected: !!event.online, lastSeen: later(state.lastSeen, ms(event.at)) };
    }
    return state;
  }

  /* What to show at nowMs: {online, via: "connection" | "reading" | null, lastSeen (ms)}. */
  function evaluate(state, nowMs, windowS) {
    const reading = state.lastReading === null ? null : Math.min(state.lastReading, nowMs);
    const recent = reading !== null && nowMs - reading <= windowS * 1000;
    const via = state.connected ? "connection" : recent ? "reading" : null;
    return { online: state.connected || recent, via, lastSeen: later(state.lastSeen, reading) };
  }

  /* Why a device shows online or offline, in words (the state cell's tooltip). */
  function reason(shown, windowS) {
    if (shown.via === "connection") return "connected to the broker";
    if (shown.via === "reading") return `a reading within the last ${windowS} s`;
    return `not connected, no reading within the last ${windowS} s`;
  }

  const api = { fromDevice, apply, evaluate, reason };
  if (typeof module === "object" && module.exports) module.exports = api;
  else root.FairwayPresence = api;
})(this);
