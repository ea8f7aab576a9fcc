/* The Tenants page's data, as pure functions (no DOM): served share per tenant from the
   stored-rate series of GET /api/tenant-stats, a bounded history that merges each poll's
   last minute, and the table's formatting. Loaded by the browser as a plain script
   (window.FairwayTenants) and by node's test runner through require
   (tests/js/tenants.test.mjs). */
(function (root) {
  "use strict";

  /* Served share per tenant at each sample time: the tenant's stored rate over all
     tenants' (null where nothing was stored). Returns {xs: seconds, cols: {tenant: []}}. */
  function shares(tenants) {
    const byX = new Map();
    for (const t of tenants) {
      for (const [ms, rate] of t.stored_series || []) {
        const row = byX.get(ms) || {};
        row[t.tenant] = rate;
        byX.set(ms, row);
      }
    }
    const xs = [...byX.keys()].sort((a, b) => a - b);
    const cols = {};
    for (const t of tenants) cols[t.tenant] = [];
    for (const x of xs) {
      const row = byX.get(x);
      const total = Object.values(row).reduce((a, b) => a + b, 0);
      for (const t of tenants) cols[t.tenant].push(total > 0 ? (row[t.tenant] || 0) / total : null);
    }
    return { xs: xs.map((ms) => ms / 1000), cols };
  }

  /* A history of points per tenant, merged by x (a later value for an x replaces the
     earlier), sorted, and at most `max` points long (the oldest dropped). */
  function history(max) {
    const points = new Map();  // x -> {tenant: value}
    return {
      add(xs, cols) {
        xs.forEach((x, i) => {
          const row = points.get(x) || {};
          for (const [tenant, values] of Object.entries(cols)) row[tenant] = values[i];
          points.set(x, row);
        });
        const sorted = [...points.keys()].sort((a, b) => a - b);
        for (const x of sorted.slice(0, Math.max(0, sorted.length - max))) points.delete(x);
      },
      data(tenants) {
        const xs = [...points.keys()].sort((a, b) => a - b);
        return [xs, ...tenants.map((t) => xs.map((x) => {
          const v = points.get(x)[t];
          return v === undefined ? null : v;
        }))];
      },
      get size() { return points.size; },
    };
  }

  const pct = (v) => (v === null || v === undefined ? "–" : `${Math.round(v * 100)} %`);
  const rate = (v) => (v >= 100 ? Math.round(v).toString() : v.toFixed(1));
  function seconds(v) {
    if (v === null || v === undefined) return "–";
    if (v < 1) return `${Math.round(v * 1000)} ms`;
    return `${v.toFixed(v < 10 ? 1 : 0)} s`;
  }

  /* The table row of one tenant: [tenant, weight, weight share, served share, ingest /s,
     stored /s, backlog before the relay, backlog before the scheduler, lag p50, lag p99].
     Lags come from the schedulers' histograms, or are the queueing estimate (backlog /
     stored rate) marked "~". */
  function row(t, lagSource) {
    const lag = lagSource === "schedulers"
      ? [seconds(t.lag_p50_s), seconds(t.lag_p99_s)]
      : [`~${seconds(t.lag_estimate_s)}`, "–"];
    return [t.tenant, String(t.weight), pct(t.weight_share), pct(t.served_share),
            rate(t.ingest_rate), rate(t.stored_rate), String(t.ingest_backlog), String(t.backlog),
            ...lag];
  }

  /* The rejections column: total over the window and the reasons, most frequent first. */
  function rejections(entry) {
    if (!entry || !entry.total) return "0";
    const parts = Object.entries(entry.by_reason).sort((a, b) => b[1] - a[1]);
    return `${entry.total} (${parts.map(([r, n]) => `${r} ${n}`).join(", ")})`;
  }

  const api = { shares, history, row, rejections, pct, seconds };
  if (typeof module === "object" && module.exports) module.exports = api;
  else root.FairwayTenants = api;
})(this);
