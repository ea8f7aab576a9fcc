/* Fairway pages: JSON API calls with the CSRF token, and the live feed over SSE. */
(function () {
  "use strict";
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const $ = (sel) => document.querySelector(sel);

  async function api(method, path, body) {
    const response = await fetch(path, {
      method,
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = response.status === 204 ? {} : await response.json();
    if (!response.ok) throw new Error(data.message || response.statusText);
    return data;
  }

  function cell(row, text, cls) {
    const td = row.insertCell();
    td.textContent = text === null || text === undefined ? "–" : String(text);
    if (cls) td.className = cls;
    return td;
  }

  function formatValues(values) {
    return Object.entries(values || {}).map(([k, v]) => `${k}=${v}`).join(" ");
  }

  /* The live feed: a short-lived token from the web app, then EventSource on the
     gateway. On any error the page fetches a new token and reconnects by itself. */
  function live(onEvent) {
    const badge = $("#live");
    if (badge) badge.hidden = false;  // shown on the pages that follow the live feed
    let source = null;
    let delay = 500;
    async function connect() {
      try {
        const { token, url } = await api("GET", "/api/push-token");
        source = new EventSource(`${url}/events?token=${encodeURIComponent(token)}`);
        const handle = (message) => {
          try { onEvent(JSON.parse(message.data)); } catch (e) { console.error(e); }
        };
        source.onmessage = handle;
        for (const kind of ["telemetry", "status", "alert", "job"]) source.addEventListener(kind, handle);
        source.onopen = () => { delay = 500; if (badge) badge.className = "live on"; };
        source.onerror = () => {
          if (badge) badge.className = "live off";
          source.close();
          setTimeout(connect, delay);
          delay = Math.min(delay * 2, 10000);
        };
      } catch (e) {
        if (badge) badge.className = "live off";
        setTimeout(connect, delay);
        delay = Math.min(delay * 2, 10000);
      }
    }
    connect();
  }

  // The newest of a device's per-stream latest values (device_state), or null.
  function newestLatest(latest) {
    let best = null;
    for (const entry of Object.values(latest || {})) {
      if (!best || Date.parse(entry.ts) > Date.parse(best.ts)) best = entry;
    }
    return best;
  }

  /* Online and last seen: connections and stored readings (presence.js), the window from
     the page (FAIRWAY_DEVICE_ONLINE_WINDOW_S), re-evaluated as time passes. */
  const onlineWindow = () => Number(document.querySelector('meta[name="fairway-online-window"]').content);
  const PRESENCE_TICK_MS = 5000;

  function showPresence(stateCell, seenCell, state) {
    const P = window.FairwayPresence;
    const shown = P.evaluate(state, Date.now(), onlineWindow());
    stateCell.textContent = shown.online ? "online" : "offline";
    stateCell.classList.toggle("online", shown.online);
    stateCell.classList.toggle("offline", !shown.online);
    stateCell.title = P.reason(shown, onlineWindow());
    seenCell.textContent = shown.lastSeen === null ? "–" : new Date(shown.lastSeen).toISOString();
  }

  async function dashboard() {
    const P = window.FairwayPresence;
    const body = $("#devices tbody");
    const rows = {};
    const { devices } = await api("GET", "/api/devices");
    for (const d of devices) {
      const row = body.insertRow();
      row.id = `device-${d.device}`;
      const link = document.createElement("a");
      link.href = `/devices/${encodeURIComponent(d.device)}`;
      link.textContent = d.device;
      row.insertCell().appendChild(link);
      cell(row, d.tenant);
      cell(row, "", "state");
      cell(row, "", "seen");
      const newest = newestLatest(d.latest);
      cell(row, newest ? formatValues(newest.values) : "", "values");
      cell(row, d.last_reading || "");
      rows[d.device] = { row, state: P.fromDevice(d) };
      showPresence(row.cells[2], row.cells[3], rows[d.device].state);
    }
    setInterval(() => {
      for (const { row, state } of Object.values(rows)) showPresence(row.cells[2], row.cells[3], state);
    }, PRESENCE_TICK_MS);
    live((event) => {
      const entry = rows[event.device];
      if (!entry) return;
      const { row } = entry;
      entry.state = P.apply(entry.state, event);
      if (event.kind === "telemetry") {
        row.cells[4].textContent = formatValues(event.values);
        row.cells[5].textContent = event.ts;
      }
      showPresence(row.cells[2], row.cells[3], entry.state);
    });
  }

  /* The device chart: one metric at a time (stream and metric chosen in #metric; metrics
     have their own units, so one axis and one min-max band stay readable), over the last
     hour, day, week or month, read from GET /api/devices/<d>/series. The server picks
     the resolution by span: raw readings for the hour, per-minute rollups for the day,
     hourly rollups for the week and the month (recent hours folded from raw readings, so
     every view reaches now). Rollups draw the mean as the line and min..max as a band. */
  const RANGES = { hour: 3600, day: 86400, week: 7 * 86400, month: 30 * 86400 };
  /* Live readings: the hour view appends each reading of the charted metric from the
     SSE feed and slides its window. Longer views re-fetch instead of folding readings
     into their last bucket here (the server's fold of rollups and recent raw readings
     stays the one truth): at most once per REFRESH_S of the view, and only after a
     reading of the charted metric arrived, so a silent device costs no requests. */
  const REFRESH_S = { day: 60, week: 300, month: 300 };
  const CHART = { line: "#2563eb", edge: "rgba(37, 99, 235, 0.35)", band: "rgba(37, 99, 235, 0.15)" };

  function deviceChart(base, info, readings) {
    const S = window.FairwaySeries;
    const box = $("#chart");
    const select = $("#metric");
    const note = $("#chart-note");
    const buttons = [...document.querySelectorAll("#ranges button[data-range]")];
    const choices = [];
    // Every numeric metric of every stream the page knows of: device_state's latest
    // values, the history page, and later the live feed.
    function offer(stream, values) {
      for (const [metric, v] of Object.entries(values || {})) {
        if (typeof v !== "number" || choices.some((c) => c.stream === stream && c.metric === metric)) continue;
        choices.push({ stream, metric });
        select.add(new Option(`${metric} · ${stream}`, String(choices.length - 1)));
      }
    }
    for (const [stream, entry] of Object.entries(info.latest || {})) offer(stream, entry.values);
    readings.forEach((r) => offer(r.stream, r.values));
    const current = () => choices[Number(select.value)] || null;

    const state = { range: "hour", resolution: null, xs: [], cols: [], from: 0, to: 0,
                    request: 0, loading: false, pending: [], dirty: false, fetched: 0 };
    let plot = null;
    let shape = "";

    function options() {
      const choice = current();
      const label = choice ? choice.metric : "no numeric readings";
      const rollup = state.resolution === "minute" || state.resolution === "hour";
      // A point between two gaps has no line to draw: mark it with a dot.
      const points = { filter: (u, i, show) => {
        if (show) return null;
        const alone = S.isolated(u.data[i]);
        return alone.length ? alone : null;
      } };
      const series = [{}, { label: rollup ? `${label} mean` : label, stroke: CHART.line, width: 2,
                            spanGaps: false, points }];
      const opts = { width: box.clientWidth || 800, height: 320, series, axes: [{}, {}],
                     scales: { x: { time: true } } };
      if (rollup) {
        const edge = { stroke: CHART.edge, width: 1, spanGaps: false, points: { show: false } };
        series.push({ ...edge, label: "min" }, { ...edge, label: "max" });
        opts.bands = [{ series: [3, 2], fill: CHART.band }];
      }
      return opts;
    }

    function render() {
      const { data, gaps } = S.withGaps(state.xs, state.cols, S.STEP[state.resolution] || 0);
      const next = `${state.resolution}|${select.value}`;
      if (!plot || next !== shape) {
        if (plot) plot.destroy();
        plot = new uPlot(options(), data, box);
        shape = next;
      } else {
        plot.setData(data);
      }
      // The whole range, not only the span of the data: silence at either end shows.
      plot.setScale("x", { min: state.from, max: state.to });
      box.dataset.range = state.range;
      box.dataset.resolution = state.resolution || "";
      box.dataset.points = String(state.xs.length);
      box.dataset.gaps = String(gaps);
      const choice = current();
      const what = state.resolution === "raw" ? "raw readings" : `per ${state.resolution}: mean, min–max band`;
      const holes = gaps ? ` · ${gaps} gap${gaps > 1 ? "s" : ""}` : "";
      note.textContent = !choice ? "No numeric readings yet."
        : state.xs.length ? what + holes : `No readings of ${choice.metric} in the last ${state.range}.`;
    }

    function addLive(x, v) {
      S.insertPoint(state.xs, state.cols, x, [v]);
      state.to = Math.max(Date.now() / 1000, x);
      state.from = state.to - RANGES.hour;
      S.dropBefore(state.xs, state.cols, state.from);
    }

    async function load() {
      const request = ++state.request;
      const choice = current();
      const to = Date.now() / 1000;
      const from = to - RANGES[state.range];
      state.loading = true;
      state.pending = [];
      box.dataset.loading = "true";
      let answer = { resolution: null, points: [] };
      if (choice) {
        const q = new URLSearchParams({ metric: choice.metric, stream: choice.stream,
                                        from: String(from), to: String(to) });
        answer = await api("GET", `${base}/series?${q}`);
      }
      if (request !== state.request) return;  // a newer choice was made meanwhile
      Object.assign(state, { from, to, resolution: answer.resolution, dirty: false,
                             fetched: Date.now() / 1000, loading: false });
      ({ xs: state.xs, columns: state.cols } = S.columns(answer));
      if (!answer.resolution) state.cols = [[]];
      // Readings that arrived while the request ran (insertPoint keeps each x once).
      if (state.resolution === "raw") state.pending.forEach(([x, v]) => addLive(x, v));
      delete box.dataset.loading;
      render();
    }

    function choose() {
      load().catch((e) => {
        state.loading = false;
        note.textContent = `Chart: ${e.message}`;
        delete box.dataset.loading;
      });
    }
    buttons.forEach((button) => button.addEventListener("click", () => {
      state.range = button.dataset.range;
      buttons.forEach((b) => b.setAttribute("aria-pressed", String(b === button)));
      choose();
    }));
    select.addEventListener("change", choose);
    setInterval(() => {
      const due = state.fetched + (REFRESH_S[state.range] || 0) <= Date.now() / 1000;
      if (state.range !== "hour" && state.dirty && !state.loading && due) choose();
    }, 5000);
    choose();

    return {
      live(event) {
        const had = choices.length;
        offer(event.stream, event.values);
        if (!had && choices.length) { choose(); return; }  // the first numeric reading
        const choice = current();
        const v = choice && event.stream === choice.stream ? event.values[choice.metric] : undefined;
        if (typeof v !== "number") return;
        const x = Date.parse(event.ts) / 1000;
        if (state.range !== "hour") { state.dirty = true; return; }
        if (state.loading) { state.pending.push([x, v]); return; }
        if (state.resolution !== "raw") return;
        addLive(x, v);
        render();
      },
    };
  }

  async function devicePage(device) {
    const base = `/api/devices/${encodeURIComponent(device)}`;
    const info = await api("GET", base);
    let presence = window.FairwayPresence.fromDevice(info);
    const refresh = () => showPresence($("#state"), $("#last-seen"), presence);
    refresh();
    setInterval(refresh, PRESENCE_TICK_MS);
    const me = await api("GET", "/api/me");
    const follow = $("#follow");
    if (me.role === "viewer") {
      const following = () => me.subscriptions.includes(device);
      const label = () => { follow.textContent = following() ? "Stop following" : "Follow live"; };
      label();
      follow.hidden = false;
      follow.onclick = async () => {
        const r = await api(following() ? "DELETE" : "PUT", `/api/subscriptions/${encodeURIComponent(device)}`);
        me.subscriptions = r.subscriptions;
        label();
      };
    }
    const history = await api("GET", `${base}/telemetry?limit=200`);
    const chart = deviceChart(base, info, history.readings);
    const table = $("#history tbody");
    function addRow(r, atTop) {
      const row = table.insertRow(atTop ? 0 : -1);
      cell(row, r.ts); cell(row, r.stream); cell(row, formatValues(r.values));
    }
    history.readings.forEach((r) => addRow(r, false));
    let cursor = history.next_cursor;
    const more = $("#more");
    more.hidden = !cursor;
    more.onclick = async () => {
      const page = await api("GET", `${base}/telemetry?limit=200&cursor=${encodeURIComponent(cursor)}`);
      page.readings.forEach((r) => addRow(r, false));
      cursor = page.next_cursor;
      more.hidden = !cursor;
    };
    const newest = newestLatest(info.latest);
    if (newest) $("#latest").textContent = formatValues(newest.values);
    $("#last-reading").textContent = info.last_reading || "–";
    const streams = $("#streams tbody");
    for (const [stream, entry] of Object.entries(info.latest || {})) {
      const row = streams.insertRow();
      row.id = `stream-${stream}`;
      cell(row, stream); cell(row, entry.ts); cell(row, formatValues(entry.values));
    }
    live((event) => {
      if (event.device !== device) return;
      presence = window.FairwayPresence.apply(presence, event);
      refresh();
      if (event.kind !== "telemetry") return;
      $("#latest").textContent = formatValues(event.values);
      $("#last-reading").textContent = event.ts;
      let streamRow = document.getElementById(`stream-${event.stream}`);
      if (!streamRow) {
        streamRow = streams.insertRow();
        streamRow.id = `stream-${event.stream}`;
        cell(streamRow, event.stream); cell(streamRow, ""); cell(streamRow, "");
      }
      streamRow.cells[1].textContent = event.ts;
      streamRow.cells[2].textContent = formatValues(event.values);
      addRow({ ts: event.ts, stream: event.stream, values: event.values }, true);
      chart.live(event);
    });
  }

  async function alertsPage(tenant) {
    const feed = $("#feed");
    const table = $("#rules tbody");
    const query = tenant ? "" : `?tenant=${encodeURIComponent(prompt("Tenant?") || "")}`;
    async function loadRules() {
      table.innerHTML = "";
      const { rules } = await api("GET", `/api/rules${query}`);
      for (const r of rules) {
        const row = table.insertRow();
        cell(row, r.device || "all devices");
        cell(row, `${r.metric} ${r.op} ${r.threshold}`);
        cell(row, r.hysteresis);
        const del = document.createElement("button");
        del.textContent = "Delete";
        del.onclick = async () => { await api("DELETE", `/api/rules/${r.rule}`); loadRules(); };
        row.insertCell().appendChild(del);
      }
    }
    loadRules().catch((e) => { feed.textContent = e.message; });
    const form = $("#new-rule");
    if (form) form.onsubmit = async (e) => {
      e.preventDefault();
      const f = new FormData(form);
      const body = { metric: f.get("metric"), op: f.get("op"), threshold: Number(f.get("threshold")),
                     hysteresis: Number(f.get("hysteresis") || 0) };
      if (f.get("device")) body.device = f.get("device");
      if (f.get("tenant")) body.tenant = f.get("tenant");
      const error = $("#rule-error");
      try { await api("POST", "/api/rules", body); error.hidden = true; form.reset(); loadRules(); }
      catch (err) { error.textContent = err.message; error.hidden = false; }
    };
    live((event) => {
      if (event.kind !== "alert") return;
      if (feed.querySelector(".muted")) feed.innerHTML = "";
      const li = document.createElement("li");
      li.className = event.state;
      li.textContent = `${event.at} ${event.device}: ${event.metric} ${event.op} ${event.threshold}` +
        ` (value ${event.value}) ${event.state}`;
      feed.prepend(li);
    });
  }

  async function reportsPage() {
    const select = $("#report-device");
    const { devices } = await api("GET", "/api/devices");
    for (const d of devices) select.add(new Option(d.device, d.device));
    const body = $("#jobs tbody");
    const rows = {};
    function showJob(job, kind) {
      let row = rows[job.job];
      if (!row) {
        row = body.insertRow(0);
        for (let i = 0; i < 5; i++) row.insertCell();
        rows[job.job] = row;
        row.cells[0].textContent = job.job;
        row.cells[1].textContent = kind || job.kind || "";
      }
      row.cells[2].textContent =
        job.state === "WAITING" ? `waiting (${job.ahead || 0} ahead)` : job.state || "";
      const p = job.progress;
      row.cells[3].textContent = p && p.total ? `${Math.round((100 * p.done) / p.total)} %` : "";
      if (job.state === "SUCCESS") {
        row.cells[4].innerHTML = "";
        const a = document.createElement("a");
        a.href = job.download || job.url || `/api/jobs/${job.job}`;
        a.textContent = job.download ? "download" : "result";
        row.cells[4].appendChild(a);
      } else if (job.error) {
        row.cells[4].textContent = job.error;
      }
    }
    async function poll(id, kind) {
      const job = await api("GET", `/api/jobs/${id}`);
      showJob({ ...job, job: id }, kind);
      if (!["SUCCESS", "FAILURE", "REVOKED"].includes(job.state)) setTimeout(() => poll(id, kind), 1000);
    }
    $("#new-report").onsubmit = async (e) => {
      e.preventDefault();
      const f = new FormData(e.target);
      const body = { from: new Date(f.get("from")).toISOString(), to: new Date(f.get("to")).toISOString() };
      // Exports take no bucket, and the API refuses keys an operation does not know.
      if (f.get("kind") === "reports") body.bucket = Number(f.get("bucket"));
      if (f.get("device")) body.device = f.get("device");
      const error = $("#report-error");
      try {
        const job = await api("POST", `/api/${f.get("kind")}`, body);
        error.hidden = true;
        poll(job.job, f.get("kind"));
      } catch (err) { error.textContent = err.message; error.hidden = false; }
    };
    live((event) => { if (event.kind === "job") poll(event.job); });
  }

  window.Fairway = { api, live, cell, formatValues, dashboard, devicePage, alertsPage, reportsPage };

  // The page names its entry point in data attributes: no inline script, so the
  // Content-Security-Policy can forbid them all. Pages with a script of their own
  // (loaded before this one) register in window.FairwayPages and get these helpers.
  const page = document.body.dataset.page;
  const entry = window.Fairway[page] || (window.FairwayPages || {})[page];
  if (page && typeof entry === "function") {
    entry(JSON.parse(document.body.dataset.pageArg || "null"), window.Fairway);
  }
})();
