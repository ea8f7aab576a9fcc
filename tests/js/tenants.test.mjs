// Unit tests of web/static/tenants.js (the Tenants page's shares, history and table),
// run by `node --test`; tests/unit/test_js.py runs them under pytest.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";

const T = createRequire(import.meta.url)("../../web/static/tenants.js");

test("served share per sample time from the stored rates", () => {
  const tenants = [
    { tenant: "a", stored_series: [[5000, 300], [10000, 100], [15000, 0]] },
    { tenant: "b", stored_series: [[5000, 100], [10000, 100], [15000, 0]] },
    { tenant: "c", stored_series: [] },
  ];
  assert.deepEqual(T.shares(tenants), {
    xs: [5, 10, 15],
    cols: { a: [0.75, 0.5, null], b: [0.25, 0.5, null], c: [0, 0, null] },
  });
});

test("history merges polls by x, replaces repeated x, keeps the newest max points", () => {
  const h = T.history(3);
  h.add([1, 2], { a: [0.5, 0.6] });
  h.add([2, 3], { a: [0.7, 0.8], b: [0.1, 0.2] });
  assert.deepEqual(h.data(["a", "b"]), [[1, 2, 3], [0.5, 0.7, 0.8], [null, 0.1, 0.2]]);
  h.add([4], { a: [0.9] });
  assert.equal(h.size, 3);
  assert.deepEqual(h.data(["a"]), [[2, 3, 4], [0.7, 0.8, 0.9]]);
});

test("a table row, with lag from the schedulers or estimated", () => {
  const t = {
    tenant: "noisy", weight: 1, weight_share: 1 / 3, served_share: 0.25, ingest_rate: 2500,
    stored_rate: 812.34, backlog: 6000, ingest_backlog: 4000, lag_p50_s: 0.0123, lag_p99_s: 12.6,
    lag_estimate_s: 12.31,
  };
  assert.deepEqual(T.row(t, "schedulers"),
    ["noisy", "1", "33 %", "25 %", "2500", "812", "4000", "6000", "12 ms", "13 s"]);
  assert.deepEqual(T.row({ ...t, stored_rate: 3.25, weight_share: null }, "estimate"),
    ["noisy", "1", "–", "25 %", "2500", "3.3", "4000", "6000", "~12 s", "–"]);
});

test("the rejections column", () => {
  assert.equal(T.rejections(undefined), "0");
  assert.equal(T.rejections({ total: 5, by_reason: { schema: 1, clock_skew: 4 } }),
    "5 (clock_skew 4, schema 1)");
});
