/* The Rejections page's data, as pure functions (no DOM): counts by reason per tenant
   and hour from GET /api/rejections/counts, the ledger's query string, and what the
   replay column says. Loaded by the browser as a plain script (window.FairwayRejections)
   and by node's test runner through require (tests/js/rejections.test.mjs). */
(function (root) {
  "use strict";

  /* Every reason code in the counts, sorted: the columns of both tables. */
  function reasons(tenants) {
    const seen = new Set();
    for (const t of tenants) for (const r of Object.keys(t.by_reason)) seen.add(r);
    return [...seen].sort();
  }

  /* One row per tenant: [tenant label, total, count per reason (0 if none)]. */
  function tenantRows(tenants, columns) {
    return tenants.map((t) => [t.tenant ?? "(no tenant)", t.total, ...columns.map((r) => t.by_reason[r] || 0)]);
  }

  /* One row per hour with rejections, newest first, summed over the tenants:
     [hour, total, count per reason]. */
  function hourRows(tenants, columns) {
    const byHour = new Map();
    for (const t of tenants) {
      for (const h of t.hours) {
        const row = byHour.get(h.hour) || {};
        for (const [r, n] of Object.entries(h.by_reason)) row[r] = (row[r] || 0) + n;
        byHour.set(h.hour, row);
      }
    }
    return [...byHour.keys()].sort().reverse().map((hour) => {
      const row = byHour.get(hour);
      const counts = columns.map((r) => row[r] || 0);
      return [hour, counts.reduce((a, b) => a + b, 0), ...counts];
    });
  }

  /* The ledger's query string from the filters (empty ones left out). */
  function ledgerQuery(filters) {
    const q = new URLSearchParams();
    for (const key of ["tenant", "device", "reason", "before", "limit"]) {
      if (filters[key]) q.set(key, String(filters[key]));
    }
    const text = q.toString();
    return text ? `?${text}` : "";
  }

  const BLOCKERS = {
    already_replayed: "replayed",
    not_replayable: "not replayable",
    body_truncated: "body cut short",
  };

  /* What the replay column shows for a ledger entry. */
  function replayText(r) {
    const s = r.replay;
    if (s && s.state === "stored") return `replayed by ${s.by}: stored`;
    if (s && s.state === "refused") return `replayed by ${s.by}: refused again (${s.reason})`;
    if (s) return `replayed by ${s.by}: on its way`;
    if (r.replayable) return "replayable";
    return BLOCKERS[r.replay_blocker] || r.replay_blocker || "";
  }

  /* True once a replay's outcome is known (no more polling). */
  function settled(r) {
    return !r.replay || r.replay.state !== "pending";
  }

  const api = { reasons, tenantRows, hourRows, ledgerQuery, replayText, settled };
  if (typeof module === "object" && module.exports) module.exports = api;
  else root.FairwayRejections = api;
})(this);
