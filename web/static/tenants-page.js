/* The Tenants page: polls GET /api/tenant-stats (computed at most every few seconds per
   web process from the broker's and the schedulers' counters, whatever the number of
   viewers), fills the table, and draws two live charts: served share per tenant (each
   poll brings the last minute at 5 s steps) and backlog per tenant (one point per poll).
   Rejections by reason over the last hour come from /api/rejections/counts, less often.
   Pure parts are in tenants.js. */
(function () {
  "use strict";
  const $ = (sel) => document.querySelector(sel);
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];
  const KEEP_POINTS = 360;  // 30 minutes of 5 s points
  const REJECTIONS_EVERY_MS = 30000;

  function chart(box, tenants, percent) {
    const series = [{}, ...tenants.map((t, i) => ({
      label: t, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: false,
      value: (u, v) => (v === null ? "–" : percent ? `${Math.round(v * 100)} %` : String(v)),
    }))];
    const axes = [{}, percent ? { values: (u, vals) => vals.map((v) => `${Math.round(v * 100)} %`) } : {}];
    const scales = { x: { time: true }, ...(percent ? { y: { range: [0, 1] } } : {}) };
    return new uPlot({ width: box.clientWidth || 800, height: 260, series, axes, scales }, [[]], box);
  }

  async function tenantsPage(_arg, F) {
    const T = window.FairwayTenants;
    const body = $("#tenants tbody");
    const note = $("#tenants-note");
    const shareHistory = T.history(KEEP_POINTS);
    const backlogHistory = T.history(KEEP_POINTS);
    let names = [];
    let shareChart = null;
    let backlogChart = null;
    let rejections = {};
    let delay = 5000;

    async function loadRejections() {
      const { tenants } = await F.api("GET", "/api/rejections/counts?hours=1");
      rejections = Object.fromEntries(tenants.map((t) => [t.tenant, t]));
    }

    function draw() {
      for (const [box, history, current, percent] of [
        [$("#share-chart"), shareHistory, shareChart, true],
        [$("#backlog-chart"), backlogHistory, backlogChart, false],
      ]) {
        const data = history.data(names);
        current.setData(data);
        box.dataset.points = String(data[0].length);
      }
    }

    async function poll() {
      const answer = await F.api("GET", "/api/tenant-stats");
      delay = (answer.refresh_s || 5) * 1000;
      const tenants = answer.tenants;
      const now = tenants.map((t) => t.tenant);
      if (now.join() !== names.join()) {
        names = now;
        if (shareChart) shareChart.destroy();
        if (backlogChart) backlogChart.destroy();
        shareChart = chart($("#share-chart"), names, true);
        backlogChart = chart($("#backlog-chart"), names, false);
      }
      body.innerHTML = "";
      for (const t of tenants) {
        const row = body.insertRow();
        row.id = `tenant-${t.tenant}`;
        for (const text of T.row(t, answer.lag_source)) F.cell(row, text);
        F.cell(row, T.rejections(rejections[t.tenant]));
        row.dataset.backlog = String(t.backlog + t.ingest_backlog);
        row.dataset.storedRate = String(t.stored_rate);
        row.dataset.servedShare = t.served_share === null ? "" : String(t.served_share);
        row.dataset.lagP99 = t.lag_p99_s === null ? "" : String(t.lag_p99_s);
      }
      const { xs, cols } = T.shares(tenants);
      shareHistory.add(xs, cols);
      backlogHistory.add([Date.parse(answer.at) / 1000],
        Object.fromEntries(tenants.map((t) => [t.tenant, [t.backlog + t.ingest_backlog]])));
      draw();
      const lag = answer.lag_source === "schedulers"
        ? `lag from ${answer.schedulers.answered} of ${answer.schedulers.asked} schedulers' histograms`
        : "lag estimated as backlog / stored rate (set FAIRWAY_SCHEDULER_METRICS_URLS for p50/p99)";
      note.textContent = `as of ${answer.at}; ${lag}`;
    }

    async function loop() {
      try { await poll(); } catch (e) { note.textContent = `Tenants: ${e.message}`; }
      setTimeout(loop, delay);
    }
    await loadRejections().catch(() => {});
    setInterval(() => loadRejections().catch(() => {}), REJECTIONS_EVERY_MS);
    loop();
  }

  window.FairwayPages = Object.assign(window.FairwayPages || {}, { tenantsPage });
})();
