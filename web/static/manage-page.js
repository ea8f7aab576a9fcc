/* The management pages (admins and operators): the device registry (register with the
   credentials and connection snippets shown once, disable, enable, rotate, lift a
   quarantine) and users
   (create, change role, disable, enable). Every change is a JSON API call carrying the
   session's CSRF token (api() in fairway.js). Pure parts are in manage.js. */
(function () {
  "use strict";
  const $ = (sel) => document.querySelector(sel);
  const CONFIRM_MS = 5000;  // a second click within this confirms a rotation
  const LABELS = { disable: "Disable", enable: "Enable", rotate: "Rotate password",
                   "lift-quarantine": "Lift quarantine" };
  const DONE = { disable: "disabled", enable: "enabled", rotate: "rotated",
                 "lift-quarantine": "quarantine lifted" };
  const enc = encodeURIComponent;

  function button(text, action) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    b.dataset.action = action;
    return b;
  }

  /* The credentials panel: filled from one answer, emptied when hidden, so the password
     lives in the page only until the user says it is copied (or leaves the page). */
  function credentialsPanel(M, access) {
    const panel = $("#credentials");
    const fields = ["#credentials-details", "#snippet-amqp", "#snippet-mqtt", "#snippet-mosquitto"];
    function hide() {
      panel.hidden = true;
      fields.forEach((sel) => { $(sel).textContent = ""; });
      delete panel.dataset.device;
    }
    function show(creds, title) {
      $("#credentials-title").textContent = title;
      const list = $("#credentials-details");
      list.textContent = "";
      for (const [name, value] of M.details(creds, access)) {
        const dt = document.createElement("dt");
        dt.textContent = name;
        const dd = document.createElement("dd");
        const code = document.createElement("code");
        code.textContent = value;
        code.dataset.field = name;
        dd.appendChild(code);
        list.append(dt, dd);
      }
      $("#snippet-amqp").textContent = M.amqpSnippet(creds, access);
      $("#snippet-mqtt").textContent = M.mqttSnippet(creds, access);
      $("#snippet-mosquitto").textContent = M.mosquittoSnippet(creds, access);
      panel.dataset.device = creds.device;
      panel.hidden = false;
      panel.scrollIntoView({ block: "start" });
    }
    $("#credentials-done").addEventListener("click", hide);
    for (const copy of panel.querySelectorAll("button.copy")) {
      copy.addEventListener("click", async () => {
        try {
          await navigator.clipboard.writeText($(`#${copy.dataset.copy}`).textContent);
          copy.textContent = "Copied";
        } catch (e) {
          copy.textContent = "Select and copy";  // no clipboard access (plain http, policy)
        }
        setTimeout(() => { copy.textContent = "Copy"; }, 2000);
      });
    }
    return { show, hide };
  }

  async function registryPage(arg, F) {
    const M = window.FairwayManage;
    const body = $("#registry tbody");
    const note = $("#registry-note");
    const panel = credentialsPanel(M, arg.access);
    const tenantFilter = $("#filter-tenant");

    function fillRow(row, d) {
      row.innerHTML = "";
      row.dataset.enabled = String(d.enabled);
      const link = document.createElement("a");
      link.href = `/devices/${enc(d.device)}`;
      link.textContent = d.device;
      row.insertCell().appendChild(link);
      F.cell(row, d.tenant);
      F.cell(row, d.enabled ? "enabled" : "disabled", `enabled ${d.enabled ? "online" : "offline"}`);
      F.cell(row, d.online ? "online" : "offline", `state ${d.online ? "online" : "offline"}`);
      const held = Boolean(d.quarantine && d.quarantine.active);
      row.dataset.quarantined = String(held);
      F.cell(row, M.quarantineText(d.quarantine), held ? "quarantine offline" : "quarantine");
      F.cell(row, d.last_seen);
      F.cell(row, d.created, "at");
      const actions = row.insertCell();
      for (const action of M.deviceActions(d)) {
        const b = button(LABELS[action], action);
        b.addEventListener("click", () => act(row, d.device, action, b));
        actions.appendChild(b);
      }
    }

    async function refreshRow(row, device) {
      fillRow(row, await F.api("GET", `/api/devices/${enc(device)}`));
    }

    async function act(row, device, action, b) {
      if (action === "rotate" && b.dataset.armed !== "true") {
        // Rotating cuts the device off until it has the new password: ask once more.
        b.dataset.armed = "true";
        b.textContent = "Confirm: rotate";
        setTimeout(() => { b.dataset.armed = "false"; b.textContent = "Rotate password"; }, CONFIRM_MS);
        return;
      }
      b.disabled = true;
      try {
        const answer = await F.api("POST", `/api/devices/${enc(device)}/${action}`);
        if (action === "rotate") panel.show(answer, `New credentials of ${device}`);
        const closed = answer.connections_closed;
        note.textContent = `${device}: ${DONE[action]}` +
          (closed > 0 ? `, ${closed} open connection${closed > 1 ? "s" : ""} closed` : "") +
          (closed === -1 ? " (the broker could not be asked to close its connections)" : "");
        await refreshRow(row, device);
      } catch (e) {
        note.textContent = `${device}: ${e.message}`;
        b.disabled = false;
      }
    }

    async function load() {
      const q = tenantFilter && tenantFilter.value ? `?tenant=${enc(tenantFilter.value)}` : "";
      const { devices } = await F.api("GET", `/api/devices${q}`);
      const part = $("#filter-device").value.trim();
      const shown = part ? devices.filter((d) => d.device.includes(part)) : devices;
      body.innerHTML = "";
      for (const d of shown) {
        const row = body.insertRow();
        row.id = `reg-${d.device}`;
        fillRow(row, d);
      }
      note.textContent = `${shown.length} of ${devices.length} device${devices.length === 1 ? "" : "s"}`;
    }

    // Linked from a device page: /registry?device=<id> shows that device.
    $("#filter-device").value = new URLSearchParams(location.search).get("device") || "";
    $("#registry-filter").addEventListener("submit", (e) => {
      e.preventDefault();
      load().catch((err) => { note.textContent = err.message; });
    });
    const form = $("#register");
    const error = $("#register-error");
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const request = { device: $("#register-device").value.trim() };
      const tenant = $("#register-tenant");
      if (tenant) request.tenant = tenant.value.trim();
      try {
        const creds = await F.api("POST", "/api/devices", request);
        error.hidden = true;
        form.reset();
        panel.show(creds, `Credentials of ${creds.device}`);
        await load();
      } catch (err) {
        error.textContent = err.message;
        error.hidden = false;
      }
    });
    await load();
  }

  async function usersPage(arg, F) {
    const M = window.FairwayManage;
    const body = $("#users tbody");
    const note = $("#users-note");
    const roles = M.assignableRoles(arg.role);
    const roleSelect = $("#new-user-role");
    roles.forEach((r) => roleSelect.add(new Option(r, r)));
    const tenantInput = $("#new-user-tenant");
    if (tenantInput) {
      const sync = () => {
        const operator = roleSelect.value === "operator";
        tenantInput.disabled = operator;  // operators belong to no tenant
        tenantInput.required = !operator;
      };
      roleSelect.addEventListener("change", sync);
      sync();
    }

    async function change(row, user, patch) {
      try {
        fillRow(row, await F.api("PATCH", `/api/users/${enc(user)}`, patch));
        note.textContent = `${user}: ` + ("role" in patch ? `now ${patch.role}` : patch.enabled ? "enabled" : "disabled");
      } catch (e) {
        note.textContent = `${user}: ${e.message}`;
        await load();
      }
    }

    function fillRow(row, u) {
      row.innerHTML = "";
      row.dataset.enabled = String(u.enabled);
      const controls = M.userControls(u, arg.me, arg.role);
      F.cell(row, u.user + (u.user === arg.me ? " (you)" : ""));
      F.cell(row, u.tenant);
      const roleCell = row.insertCell();
      roleCell.className = "role";
      if (controls.includes("role")) {
        const select = document.createElement("select");
        select.setAttribute("aria-label", `role of ${u.user}`);
        // Operators' own tenant-less role cannot be given to a tenant's user and back.
        for (const r of roles) {
          if ((r === "operator") !== (u.role === "operator")) continue;
          select.add(new Option(r, r, false, r === u.role));
        }
        select.addEventListener("change", () => change(row, u.user, { role: select.value }));
        roleCell.appendChild(select);
      } else {
        roleCell.textContent = u.role;
      }
      F.cell(row, u.enabled ? "enabled" : "disabled", `enabled ${u.enabled ? "online" : "offline"}`);
      F.cell(row, u.created, "at");
      const actions = row.insertCell();
      for (const action of controls.filter((c) => c !== "role")) {
        const b = button(action === "disable" ? "Disable" : "Enable", action);
        b.addEventListener("click", () => change(row, u.user, { enabled: action === "enable" }));
        actions.appendChild(b);
      }
    }

    async function load() {
      const { users } = await F.api("GET", "/api/users");
      body.innerHTML = "";
      for (const u of users) {
        const row = body.insertRow();
        row.id = `user-${u.user}`;
        fillRow(row, u);
      }
    }

    const form = $("#new-user");
    const error = $("#user-error");
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const f = new FormData(form);
      const request = { user: f.get("user").trim(), password: f.get("password"), role: f.get("role") };
      if (tenantInput && !tenantInput.disabled) request.tenant = tenantInput.value.trim();
      try {
        await F.api("POST", "/api/users", request);
        error.hidden = true;
        form.reset();
        note.textContent = `${request.user} created (${request.role})`;
        await load();
      } catch (err) {
        error.textContent = err.message;
        error.hidden = false;
      }
    });
    await load();
  }

  window.FairwayPages = Object.assign(window.FairwayPages || {}, { registryPage, usersPage });
})();
