// Unit tests of web/static/presence.js (online and last seen in the pages), run by
// `node --test`; tests/unit/test_js.py runs them under pytest.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";

const P = createRequire(import.meta.url)("../../web/static/presence.js");
const T0 = Date.parse("2026-01-01T00:00:00Z");
const iso = (ms) => new Date(ms).toISOString();

test("a device never seen is offline with no last seen", () => {
  const state = P.fromDevice({ connected: false, last_seen: null, last_reading: null });
  assert.deepEqual(P.evaluate(state, T0, 300), { online: false, via: null, lastSeen: null });
});

test("a recent reading makes a device online without a connection, until the window passes", () => {
  const state = P.fromDevice({ connected: false, last_seen: null, last_reading: iso(T0 - 10_000) });
  assert.deepEqual(P.evaluate(state, T0, 300), { online: true, via: "reading", lastSeen: T0 - 10_000 });
  assert.equal(P.evaluate(state, T0 + 290_000, 300).online, true);
  assert.deepEqual(P.evaluate(state, T0 + 291_000, 300), {
    online: false, via: null, lastSeen: T0 - 10_000,
  });
});

test("connected is online whatever the readings; last seen is the latest of both", () => {
  const state = P.fromDevice({
    connected: true, last_seen: iso(T0 - 3_600_000), last_reading: iso(T0 - 7_200_000),
  });
  assert.deepEqual(P.evaluate(state, T0, 300), {
    online: true, via: "connection", lastSeen: T0 - 3_600_000,
  });
});

test("live events: a reading refreshes, a disconnect leaves the reading's window", () => {
  let state = P.fromDevice({ connected: true, last_seen: iso(T0 - 60_000), last_reading: null });
  state = P.apply(state, { kind: "telemetry", ts: iso(T0 - 5_000) });
  state = P.apply(state, { kind: "status", online: false, at: iso(T0 - 1_000) });
  assert.deepEqual(P.evaluate(state, T0, 300), { online: true, via: "reading", lastSeen: T0 - 1_000 });
  assert.equal(P.evaluate(state, T0 + 296_000, 300).online, false);
  // An older reading arriving late does not move the newest back.
  const late = P.apply(state, { kind: "telemetry", ts: iso(T0 - 900_000) });
  assert.equal(late.lastReading, T0 - 5_000);
  // Alerts and jobs change nothing.
  assert.equal(P.apply(state, { kind: "alert" }), state);
});

test("a reading from a fast clock counts as seen now, not in the future", () => {
  const state = P.fromDevice({ connected: false, last_seen: null, last_reading: iso(T0 + 120_000) });
  assert.deepEqual(P.evaluate(state, T0, 300), { online: true, via: "reading", lastSeen: T0 });
});

test("the reason in words", () => {
  assert.equal(P.reason({ via: "connection" }, 300), "connected to the broker");
  assert.equal(P.reason({ via: "reading" }, 300), "a reading within the last 300 s");
  assert.match(P.reason({ via: null }, 60), /no reading within the last 60 s/);
});
