// Unit tests of web/static/manage.js (the registry's connection snippets, the controls a
// row offers), run by `node --test`; tests/unit/test_js.py runs them under pytest.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";

const M = createRequire(import.meta.url)("../../web/static/manage.js");

const CREDS = { device: "boiler-7", tenant: "acme", username: "boiler-7", password: "p-W_9x" };
const PLAIN = {
  amqp: { tls: false, host: "127.0.0.1", port: 5672, vhost: "/" },
  mqtt: { tls: false, host: "127.0.0.1", port: 1883 },
  exchange: "telemetry",
};
const TLS = {
  amqp: { tls: true, host: "broker.example", port: 5671, vhost: "fairway" },
  mqtt: { tls: true, host: "broker.example", port: 8883 },
  exchange: "telemetry",
};

test("the AMQP URL carries the device's credentials and the encoded vhost", () => {
  assert.equal(M.amqpUrl(CREDS, PLAIN), "amqp://boiler-7:p-W_9x@127.0.0.1:5672/%2F");
  assert.equal(M.amqpUrl(CREDS, TLS), "amqps://boiler-7:p-W_9x@broker.example:5671/fairway");
  const odd = { ...CREDS, password: "a:b@c/d" };
  assert.equal(M.amqpUrl(odd, PLAIN), "amqp://boiler-7:a%3Ab%40c%2Fd@127.0.0.1:5672/%2F");
});

test("MQTT logs in as vhost:device", () => {
  assert.equal(M.mqttUsername(CREDS, PLAIN), "/:boiler-7");
  assert.equal(M.mqttUsername(CREDS, TLS), "fairway:boiler-7");
});

test("the details list every value a device needs", () => {
  const d = Object.fromEntries(M.details(CREDS, TLS));
  assert.equal(d.Password, "p-W_9x");
  assert.equal(d["MQTT broker"], "mqtts://broker.example:8883");
  assert.equal(d["MQTT topic"], "boiler-7/<stream>");
  assert.equal(d["Exchange, routing key"], "telemetry, boiler-7.<stream>");
});

test("the AMQP snippet publishes to telemetry with the device's routing key and confirms", () => {
  const s = M.amqpSnippet(CREDS, PLAIN);
  assert.match(s, /pika\.URLParameters\("amqp:\/\/boiler-7:p-W_9x@127\.0\.0\.1:5672\/%2F"\)/);
  assert.match(s, /channel\.confirm_delivery\(\)/);
  assert.match(s, /"telemetry",\n {4}"boiler-7\.env",/);
  assert.doesNotMatch(s, /ssl/);
  const tls = M.amqpSnippet(CREDS, TLS);
  assert.match(tls, /cafile="ca\.pem"/);
  assert.match(tls, /pika\.SSLOptions\(.*"broker\.example"\)/);
});

test("the MQTT snippets use the client id, user name, topic and QoS 1", () => {
  const s = M.mqttSnippet(CREDS, PLAIN);
  assert.match(s, /publish\.single\(\n {4}"boiler-7\/env",/);
  assert.match(s, /client_id="boiler-7"/);
  assert.match(s, /"username": "\/:boiler-7", "password": "p-W_9x"/);
  assert.match(s, /port=1883,/);
  assert.doesNotMatch(s, /tls=/);
  assert.match(M.mqttSnippet(CREDS, TLS), /tls=\{"ca_certs": "ca\.pem"\}/);
  const sh = M.mosquittoSnippet({ ...CREDS, password: "it's" }, TLS);
  assert.match(sh, /^mosquitto_pub -h 'broker\.example' -p 8883 --cafile ca\.pem/);
  assert.match(sh, /-u 'fairway:boiler-7' -P 'it'\\''s'/);
  assert.match(sh, /-q 1 -t 'boiler-7\/env'/);
});

test("device rows offer enable or disable, and rotate", () => {
  assert.deepEqual(M.deviceActions({ enabled: true }), ["disable", "rotate"]);
  assert.deepEqual(M.deviceActions({ enabled: false }), ["enable", "rotate"]);
});

test("a quarantined device offers lifting it, and shows until when and why", () => {
  const q = { active: true, since: "2026-12-06T01:00:00Z", until: "2026-12-06T01:05:00Z",
              offences: 1, reason: "device_quarantined" };
  assert.deepEqual(M.deviceActions({ enabled: true, quarantine: q }),
                   ["disable", "rotate", "lift-quarantine"]);
  assert.deepEqual(M.deviceActions({ enabled: true, quarantine: { ...q, active: false } }),
                   ["disable", "rotate"]);
  assert.equal(M.quarantineText(q),
               "until 2026-12-06T01:05:00Z (1 offence; device_quarantined)");
  assert.equal(M.quarantineText({ ...q, active: false, offences: 3 }),
               "none (ended 2026-12-06T01:05:00Z; 3 offences)");
  assert.equal(M.quarantineText(null), "");
});

test("roles and user controls follow who manages whom", () => {
  assert.deepEqual(M.assignableRoles("admin"), ["viewer", "admin"]);
  assert.deepEqual(M.assignableRoles("operator"), ["viewer", "admin", "operator"]);
  const viewer = { user: "vi", role: "viewer", enabled: true };
  assert.deepEqual(M.userControls(viewer, "ada", "admin"), ["role", "disable"]);
  assert.deepEqual(M.userControls({ ...viewer, enabled: false }, "ada", "admin"), ["role", "enable"]);
  assert.deepEqual(M.userControls({ ...viewer, user: "ada" }, "ada", "admin"), []);
  const op = { user: "root", role: "operator", enabled: true };
  assert.deepEqual(M.userControls(op, "ada", "admin"), []);
  assert.deepEqual(M.userControls(op, "ops", "operator"), ["role", "disable"]);
});
