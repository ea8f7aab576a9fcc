// Unit tests of web/static/series.js (the device chart's data), run by `node --test`;
// tests/unit/test_js.py runs them under pytest, so `make test` includes them.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";

const S = createRequire(import.meta.url)("../../web/static/series.js");

test("raw readings: a null where the interval exceeds twice the median", () => {
  const xs = [0, 10, 20, 30, 100, 110, 120];
  const { data, gaps } = S.withGaps(xs, [[1, 2, 3, 4, 5, 6, 7]], S.STEP.raw);
  assert.equal(gaps, 1);
  assert.deepEqual(data, [[0, 10, 20, 30, 65, 100, 110, 120], [1, 2, 3, 4, null, 5, 6, 7]]);
});

test("jitter below twice the spacing is no gap", () => {
  const xs = [0, 10, 29, 40, 50, 69];
  assert.equal(S.withGaps(xs, [xs.map(() => 1)], 0).gaps, 0);
});

test("rollups: the step is the expected spacing; one missing bucket is bridged, two are a gap", () => {
  const xs = [0, 60, 120, 240, 300, 480];
  const mean = [1, 2, 3, 4, 5, 6];
  const { data, gaps } = S.withGaps(xs, [mean, mean, mean], S.STEP.minute);
  assert.equal(gaps, 1);
  assert.deepEqual(data[0], [0, 60, 120, 240, 300, 390, 480]);
  for (const col of data.slice(1)) assert.deepEqual(col, [1, 2, 3, 4, 5, null, 6]);
});

test("sparse data in a finer resolution: the median interval wins over the step", () => {
  const xs = [0, 300, 600, 900, 1200, 4000];  // every 5 minutes in a per-minute chart
  const { data, gaps } = S.withGaps(xs, [[1, 2, 3, 4, 5, 6]], S.STEP.minute);
  assert.equal(gaps, 1);
  assert.deepEqual(data[1], [1, 2, 3, 4, 5, null, 6]);
  assert.equal(S.expectedSpacing(xs, S.STEP.minute), 300);
  assert.equal(S.expectedSpacing([0, 10], S.STEP.hour), 3600);
});

test("no points, one point, two points: nothing to break", () => {
  assert.deepEqual(S.withGaps([], [[]], 0), { data: [[], []], gaps: 0 });
  assert.deepEqual(S.withGaps([5], [[1]], 0), { data: [[5], [1]], gaps: 0 });
  assert.deepEqual(S.withGaps([5, 500], [[1, 2]], 0), { data: [[5, 500], [1, 2]], gaps: 0 });
});

test("the series answer as columns", () => {
  const raw = { resolution: "raw", points: [["2026-01-01T00:00:00Z", 1.5], ["2026-01-01T00:00:10Z", 2]] };
  assert.deepEqual(S.columns(raw), { xs: [1767225600, 1767225610], columns: [[1.5, 2]] });
  const hour = { resolution: "hour", points: [{ t: "2026-01-01T00:00:00Z", n: 2, min: 1, max: 3, mean: 2 }] };
  assert.deepEqual(S.columns(hour), { xs: [1767225600], columns: [[2], [1], [3]] });
});

test("live points: inserted in order, a repeated x replaced, old ones dropped", () => {
  const xs = [10, 20, 30];
  const cols = [[1, 2, 3]];
  S.insertPoint(xs, cols, 40, [4]);
  S.insertPoint(xs, cols, 25, [2.5]);
  S.insertPoint(xs, cols, 30, [3.5]);
  assert.deepEqual([xs, cols], [[10, 20, 25, 30, 40], [[1, 2, 2.5, 3.5, 4]]]);
  S.dropBefore(xs, cols, 21);
  assert.deepEqual([xs, cols], [[25, 30, 40], [[2.5, 3.5, 4]]]);
});

test("isolated points are those without a non-null neighbour", () => {
  assert.deepEqual(S.isolated([1, null, 2, 3, null, 4]), [0, 5]);
  assert.deepEqual(S.isolated([1, 2]), []);
  assert.deepEqual(S.isolated([null, 7, null]), [1]);
});
