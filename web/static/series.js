/* Chart data for the device page, as pure functions (no DOM): the series endpoint's
   answer as uPlot columns, and gaps in the data as nulls so uPlot breaks the line.
   Loaded by the browser as a plain script (window.FairwaySeries) and by node's test
   runner through require (tests/js/series.test.mjs). */
(function (root) {
  "use strict";

  // Seconds between two points of each resolution the series endpoint answers; raw
  // readings have no step of their own (their spacing is measured, see expectedSpacing).
  const STEP = { raw: 0, minute: 60, hour: 3600 };
  // A gap is a distance between two neighbouring points above this many expected spacings.
  const GAP_FACTOR = 2;

  function median(values) {
    if (!values.length) return 0;
    const sorted = values.slice().sort((a, b) => a - b);
    const mid = sorted.length >> 1;
    return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  }

  /* The spacing a chart expects between neighbouring points: the resolution's step, or
     the median interval of the points if that is longer (a device reporting every five
     minutes has a point every five minutes in a per-minute chart, not every minute). */
  function expectedSpacing(xs, step) {
    const diffs = [];
    for (let i = 1; i < xs.length; i++) diffs.push(xs[i] - xs[i - 1]);
    return Math.max(step || 0, median(diffs));
  }

  /* Columns with a null row inserted wherever two neighbouring points are further apart
     than GAP_FACTOR expected spacings; uPlot (spanGaps: false) breaks the line there.
     xs: ascending seconds; columns: arrays as long as xs. Returns {data: [xs, ...columns],
     gaps: the number of nulls inserted}. */
  function withGaps(xs, columns, step, factor = GAP_FACTOR) {
    const limit = factor * expectedSpacing(xs, step);
    const outX = [];
    const out = columns.map(() => []);
    let gaps = 0;
    for (let i = 0; i < xs.length; i++) {
      if (i > 0 && limit > 0 && xs[i] - xs[i - 1] > limit) {
        outX.push((xs[i - 1] + xs[i]) / 2);
        out.forEach((col) => col.push(null));
        gaps += 1;
      }
      outX.push(xs[i]);
      columns.forEach((col, c) => out[c].push(col[i] ?? null));
    }
    return { data: [outX, ...out], gaps };
  }

  /* The series endpoint's answer as columns: raw -> xs and [value]; minute or hour
     rollups -> xs and [mean, min, max] (the line and the band around it). */
  function columns(answer) {
    const xs = [];
    if (answer.resolution === "raw") {
      const values = [];
      for (const [t, v] of answer.points) { xs.push(Date.parse(t) / 1000); values.push(v); }
      return { xs, columns: [values] };
    }
    const mean = [], min = [], max = [];
    for (const p of answer.points) {
      xs.push(Date.parse(p.t) / 1000); mean.push(p.mean); min.push(p.min); max.push(p.max);
    }
    return { xs, columns: [mean, min, max] };
  }

  /* Insert one point into columns kept sorted by x (live readings can arrive out of
     order); a point at an x already present replaces it (a redelivered reading). */
  function insertPoint(xs, cols, x, values) {
    let i = xs.length;
    while (i > 0 && xs[i - 1] > x) i -= 1;
    if (i > 0 && xs[i - 1] === x) {
      cols.forEach((col, c) => { col[i - 1] = values[c]; });
      return;
    }
    xs.splice(i, 0, x);
    cols.forEach((col, c) => col.splice(i, 0, values[c]));
  }

  /* Drop the points before x (the hour view slides with the live feed). */
  function dropBefore(xs, cols, x) {
    let n = 0;
    while (n < xs.length && xs[n] < x) n += 1;
    if (n) { xs.splice(0, n); cols.forEach((col) => col.splice(0, n)); }
  }

  /* Indexes of points with no non-null neighbour: a line draws nothing for them, so the
     chart marks them with a dot. */
  function isolated(values) {
    const out = [];
    for (let i = 0; i < values.length; i++) {
      if (values[i] == null) continue;
      if ((i === 0 || values[i - 1] == null) && (i === values.length - 1 || values[i + 1] == null)) out.push(i);
    }
    return out;
  }

  const api = { STEP, GAP_FACTOR, median, expectedSpacing, withGaps, columns, insertPoint, dropBefore, isolated };
  if (typeof module === "object" && module.exports) module.exports = api;
  else root.FairwaySeries = api;
})(this);
