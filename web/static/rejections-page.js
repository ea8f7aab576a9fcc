/* The Rejections page: counts by reason (per tenant and per hour), the tenant-wide ledger
   with filters, and replay of chosen rejections (admins and operators), whose outcome
   (stored, refused again, on its way) is followed until known. Pure parts are in
   rejections.js; the API helpers come from fairway.js. */
(function () {
  "use strict";
  const $ = (sel) => document.querySelector(sel);
  const PAGE = 200;
  const POLL_MS = 2000;
  const POLL_FOR_MS = 60000;

  function fillTable(table, head, rows) {
    const headRow = table.tHead.rows[0];
    while (headRow.cells.length > 2) headRow.deleteCell(-1);
    for (const name of head) {
      const th = document.createElement("th");
      th.textContent = name;
      headRow.appendChild(th);
    }
    const body = table.tBodies[0];
    body.innerHTML = "";
    for (const values of rows) {
      const row = body.insertRow();
      for (const v of values) row.insertCell().textContent = String(v);
    }
    if (!rows.length) {
      const cell = body.insertRow().insertCell();
      cell.colSpan = 2 + head.length;
      cell.className = "muted";
      cell.textContent = "No rejections.";
    }
  }

  async function rejectionsPage(arg, F) {
    const R = window.FairwayRejections;
    const canReplay = arg && (arg.role === "admin" || arg.role === "operator");
    const tenantInput = $("#filter-tenant");

    async function loadCounts() {
      const q = tenantInput && tenantInput.value ? `?tenant=${encodeURIComponent(tenantInput.value)}` : "";
      const { tenants } = await F.api("GET", `/api/rejections/counts${q}`);
      const columns = R.reasons(tenants);
      fillTable($("#reason-counts"), columns, R.tenantRows(tenants, columns));
      fillTable($("#hour-counts"), columns, R.hourRows(tenants, columns));
    }

    const { devices } = await F.api("GET", "/api/devices");
    const deviceSelect = $("#filter-device");
    for (const d of devices) deviceSelect.add(new Option(d.device, d.device));

    const body = $("#ledger tbody");
    const rows = new Map();  // rejection id -> {row, entry}
    let oldest = null;

    function replayCell(row, entry) {
      const box = row.cells[0].firstChild;
      if (box) box.disabled = !canReplay || !entry.replayable;
      row.cells[5].textContent = R.replayText(entry);
      row.dataset.replay = entry.replay ? entry.replay.state : (entry.replayable ? "replayable" : "no");
    }

    function addRow(entry) {
      const row = body.insertRow();
      row.id = `rejection-${entry.id}`;
      const box = document.createElement("input");
      box.type = "checkbox";
      box.value = entry.id;
      box.addEventListener("change", updateButton);
      row.insertCell().appendChild(box);
      F.cell(row, entry.at, "at");
      F.cell(row, entry.device);
      F.cell(row, entry.reason);
      F.cell(row, entry.detail, "detail");
      row.insertCell();
      replayCell(row, entry);
      rows.set(entry.id, { row, entry });
    }

    function filters(before) {
      return {
        tenant: tenantInput ? tenantInput.value : "",
        device: deviceSelect.value,
        reason: $("#filter-reason").value,
        before,
        limit: PAGE,
      };
    }

    async function loadLedger(before) {
      const { rejections } = await F.api("GET", `/api/rejections${R.ledgerQuery(filters(before))}`);
      if (!before) { body.innerHTML = ""; rows.clear(); }
      rejections.forEach(addRow);
      oldest = rejections.length ? rejections[rejections.length - 1].at : oldest;
      $("#older").hidden = rejections.length < PAGE;
      updateButton();
    }

    function selected() {
      return [...body.querySelectorAll("input[type=checkbox]:checked")].map((b) => b.value);
    }

    function updateButton() {
      const button = $("#replay");
      if (button) button.disabled = selected().length === 0;
    }

    async function follow(id, until) {
      const entry = await F.api("GET", `/api/rejections/${encodeURIComponent(id)}`);
      const known = rows.get(id);
      if (known) { known.entry = entry; replayCell(known.row, entry); }
      if (!R.settled(entry) && Date.now() < until) setTimeout(() => follow(id, until), POLL_MS);
    }

    const replayButton = $("#replay");
    if (replayButton) replayButton.addEventListener("click", async () => {
      const ids = selected();
      const note = $("#replay-note");
      replayButton.disabled = true;
      try {
        const { results } = await F.api("POST", "/api/rejections/replay", { ids });
        const sent = results.filter((r) => r.outcome === "sent");
        const refused = results.filter((r) => r.outcome !== "sent");
        note.className = refused.length ? "error" : "";
        note.textContent = `${sent.length} sent` +
          (refused.length ? `; refused: ${refused.map((r) => `${r.error} (${r.message})`).join("; ")}` : "");
        for (const r of results) {
          const known = rows.get(r.id);
          if (known) known.row.cells[0].firstChild.checked = false;
          if (r.outcome === "sent") follow(r.id, Date.now() + POLL_FOR_MS);
        }
      } catch (e) {
        note.className = "error";
        note.textContent = e.message;
      }
      updateButton();
    });

    $("#select-all").addEventListener("change", (e) => {
      for (const box of body.querySelectorAll("input[type=checkbox]")) {
        if (!box.disabled) box.checked = e.target.checked;
      }
      updateButton();
    });
    $("#ledger-filter").addEventListener("submit", (e) => {
      e.preventDefault();
      loadLedger(null).catch((err) => { $("#replay-note").textContent = err.message; });
      loadCounts().catch(() => {});
    });
    $("#older").addEventListener("click", () => loadLedger(oldest));
    await Promise.all([loadCounts(), loadLedger(null)]);
    setInterval(() => loadCounts().catch(() => {}), 30000);
  }

  window.FairwayPages = Object.assign(window.FairwayPages || {}, { rejectionsPage });
})();
