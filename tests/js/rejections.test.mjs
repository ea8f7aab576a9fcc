// Unit tests of web/static/rejections.js (the Rejections page's tables and replay
// column), run by `node --test`; tests/unit/test_js.py runs them under pytest.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";

const R = createRequire(import.meta.url)("../../web/static/rejections.js");

const COUNTS = [
  {
    tenant: null, total: 2, by_reason: { unknown_device: 2 },
    hours: [{ hour: "2026-01-01T10:00:00Z", by_reason: { unknown_device: 2 } }],
  },
  {
    tenant: "acme", total: 5, by_reason: { clock_skew: 3, rate_limited: 2 },
    hours: [
      { hour: "2026-01-01T10:00:00Z", by_reason: { clock_skew: 1 } },
      { hour: "2026-01-01T11:00:00Z", by_reason: { clock_skew: 2, rate_limited: 2 } },
    ],
  },
];

test("reason columns are every code seen, sorted", () => {
  assert.deepEqual(R.reasons(COUNTS), ["clock_skew", "rate_limited", "unknown_device"]);
  assert.deepEqual(R.reasons([]), []);
});

test("tenant rows: totals and a count per reason column", () => {
  const cols = R.reasons(COUNTS);
  assert.deepEqual(R.tenantRows(COUNTS, cols), [
    ["(no tenant)", 2, 0, 0, 2],
    ["acme", 5, 3, 2, 0],
  ]);
});

test("hour rows: summed over tenants, newest hour first", () => {
  const cols = R.reasons(COUNTS);
  assert.deepEqual(R.hourRows(COUNTS, cols), [
    ["2026-01-01T11:00:00Z", 4, 2, 2, 0],
    ["2026-01-01T10:00:00Z", 3, 1, 0, 2],
  ]);
});

test("the ledger query leaves empty filters out", () => {
  assert.equal(R.ledgerQuery({}), "");
  assert.equal(R.ledgerQuery({ device: "d 1", reason: "", limit: 200 }), "?device=d+1&limit=200");
});

test("the replay column", () => {
  assert.equal(R.replayText({ replayable: true, replay: null }), "replayable");
  assert.equal(R.replayText({ replayable: false, replay_blocker: "not_replayable" }), "not replayable");
  assert.equal(R.replayText({ replay: { by: "ada", state: "stored" } }), "replayed by ada: stored");
  assert.equal(
    R.replayText({ replay: { by: "ada", state: "refused", reason: "clock_skew" } }),
    "replayed by ada: refused again (clock_skew)",
  );
  assert.equal(R.replayText({ replay: { by: "ada", state: "pending" } }), "replayed by ada: on its way");
  assert.equal(R.settled({ replay: { state: "pending" } }), false);
  assert.equal(R.settled({ replay: { state: "stored" } }), true);
  assert.equal(R.settled({ replay: null }), true);
});
