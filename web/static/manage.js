/* The management pages' pure parts (no DOM): the connection snippets shown once with a
   device's new credentials, and which controls a row offers. Loaded by the browser as a
   plain script (window.FairwayManage) and by node's test runner through require
   (tests/js/manage.test.mjs). */
(function (root) {
  "use strict";

  // Strings go into Python as JSON string literals (a valid Python literal for these
  // ids and passwords) and into a shell between single quotes.
  const py = (s) => JSON.stringify(String(s));
  const sh = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`;

  /* The AMQP URL a device connects with: its id and password, the vhost percent-encoded
     ("/" is "%2F"). access: {amqp: {tls, host, port, vhost}} from the page. */
  function amqpUrl(creds, access) {
    const a = access.amqp;
    const user = `${encodeURIComponent(creds.username)}:${encodeURIComponent(creds.password)}`;
    return `${a.tls ? "amqps" : "amqp"}://${user}@${a.host}:${a.port}/${encodeURIComponent(a.vhost)}`;
  }

  /* MQTT logs in as "<vhost>:<device>" (RabbitMQ's MQTT plugin picks the vhost from it). */
  function mqttUsername(creds, access) {
    return `${access.amqp.vhost}:${creds.username}`;
  }

  /* Name/value pairs for the credentials panel. */
  function details(creds, access) {
    const m = access.mqtt;
    return [
      ["Device", creds.device],
      ["Tenant", creds.tenant],
      ["User name (AMQP)", creds.username],
      ["Password", creds.password],
      ["AMQP URL", amqpUrl(creds, access)],
      ["Exchange, routing key", `${access.exchange}, ${creds.device}.<stream>`],
      ["MQTT broker", `${m.tls ? "mqtts" : "mqtt"}://${m.host}:${m.port}`],
      ["MQTT user name", mqttUsername(creds, access)],
      ["MQTT client id", `${creds.device} (or ${creds.device}.<suffix>)`],
      ["MQTT topic", `${creds.device}/<stream>`],
    ];
  }

  /* A Python script publishing one reading over AMQP with pika, confirmed by the broker. */
  function amqpSnippet(creds, access, stream = "env") {
    const lines = [
      "# pip install pika",
      "import json, time",
      "",
      "import pika",
      "",
      `params = pika.URLParameters(${py(amqpUrl(creds, access))})`,
    ];
    if (access.amqp.tls) {
      lines.push("# A private CA: trust its certificate (ca.pem) instead of the system's.",
                 "import ssl",
                 `params.ssl_options = pika.SSLOptions(ssl.create_default_context(cafile="ca.pem"), ${py(access.amqp.host)})`);
    }
    lines.push(
      "connection = pika.BlockingConnection(params)",
      "channel = connection.channel()",
      "channel.confirm_delivery()  # basic_publish raises if the broker refuses it",
      'reading = {"ts": time.time(), "values": {"temp": 21.5}}',
      "channel.basic_publish(",
      `    ${py(access.exchange)},`,
      `    ${py(`${creds.device}.${stream}`)},`,
      "    json.dumps(reading),",
      '    pika.BasicProperties(content_type="application/json", delivery_mode=2),',
      ")",
      "connection.close()",
    );
    return lines.join("\n");
  }

  /* A Python script publishing one reading over MQTT with paho-mqtt (QoS 1). */
  function mqttSnippet(creds, access, stream = "env") {
    const m = access.mqtt;
    const lines = [
      "# pip install paho-mqtt",
      "import json, time",
      "",
      "import paho.mqtt.publish as publish",
      "",
      'reading = {"ts": time.time(), "values": {"temp": 21.5}}',
      "publish.single(",
      `    ${py(`${creds.device}/${stream}`)},`,
      "    json.dumps(reading),",
      "    qos=1,",
      `    hostname=${py(m.host)},`,
      `    port=${m.port},`,
      `    client_id=${py(creds.device)},`,
      `    auth={"username": ${py(mqttUsername(creds, access))}, "password": ${py(creds.password)}},`,
    ];
    if (m.tls) lines.push('    tls={"ca_certs": "ca.pem"},  # the broker\'s CA certificate');
    lines.push(")");
    return lines.join("\n");
  }

  /* The same reading from a shell with mosquitto_pub. */
  function mosquittoSnippet(creds, access, stream = "env") {
    const m = access.mqtt;
    const parts = [
      `mosquitto_pub -h ${sh(m.host)} -p ${m.port}${m.tls ? " --cafile ca.pem" : ""}`,
      `  -i ${sh(creds.device)} -u ${sh(mqttUsername(creds, access))} -P ${sh(creds.password)}`,
      `  -q 1 -t ${sh(`${creds.device}/${stream}`)}`,
      '  -m "{\\"ts\\": $(date +%s), \\"values\\": {\\"temp\\": 21.5}}"',
    ];
    return parts.join(" \\\n");
  }

  /* What a device row offers: enable or disable (whichever applies), rotate, and lift
     its quarantine while one holds. */
  function deviceActions(device) {
    const actions = [device.enabled ? "disable" : "enable", "rotate"];
    if (device.quarantine && device.quarantine.active) actions.push("lift-quarantine");
    return actions;
  }

  /* A device's quarantine as the registry shows it (the API's `quarantine` field): while
     it holds, until when, the offence count and the reason; a past one only by its count
     (a repeat offence lasts longer); nothing if there never was one. */
  function quarantineText(q) {
    if (!q) return "";
    const offences = `${q.offences} offence${q.offences === 1 ? "" : "s"}`;
    if (!q.active) return `none (ended ${q.until}; ${offences})`;
    return `until ${q.until} (${offences}; ${q.reason})`;
  }

  /* The roles a manager may give: admins give admin or viewer, operators also operator. */
  function assignableRoles(role) {
    return role === "operator" ? ["viewer", "admin", "operator"] : ["viewer", "admin"];
  }

  /* Controls of a user row: none on the caller's own row (no locking oneself out) and
     none on operators for an admin (the API refuses it). */
  function userControls(user, me, role) {
    if (user.user === me) return [];
    if (user.role === "operator" && role !== "operator") return [];
    return ["role", user.enabled ? "disable" : "enable"];
  }

  const api = { amqpUrl, mqttUsername, details, amqpSnippet, mqttSnippet, mosquittoSnippet,
                deviceActions, quarantineText, assignableRoles, userControls };
  if (typeof module === "object" && module.exports) module.exports = api;
  else root.FairwayManage = api;
})(this);
