#!/usr/bin/env node
/*
 * CLI driver for the official, unmodified CleverTap Node client (npm `clevertap`,
 * pinned in package.json / package-lock.json). Used by Propel's Python tests to
 * check that the real client can talk to Propel's CleverTap-compatible API.
 *
 * Usage:
 *   node clevertap_driver.js <command> [<json-argument> | - | @file]
 *
 *   The JSON argument is given inline, or read from stdin ("-"), or from a file
 *   ("@/path/to/file.json"), which is useful for large upload payloads.
 *
 * Environment:
 *   PROPEL_CT_ENDPOINT   required. "127.0.0.1:8123" or "http://127.0.0.1:8123"
 *                        (both become http://127.0.0.1:8123/1), or a full base URL
 *                        with a path (used as given, trailing "/" stripped), e.g.
 *                        "http://127.0.0.1:8123/1". The client appends
 *                        "/<endpoint>" (e.g. "/upload", "/events.json?...").
 *   PROPEL_CT_ACCOUNT    required. Sent as X-CleverTap-Account-Id.
 *   PROPEL_CT_PASSCODE   required. Sent as X-CleverTap-Passcode.
 *   PROPEL_CT_REGION     optional, default "eu1". Must be a region the client
 *                        accepts (eu1 in1 sg1 us1 aps3 mec1); it has no effect
 *                        once the endpoint is overridden.
 *   PROPEL_CT_TIMEOUT_MS optional, default 30000. The client has no timeout and
 *                        pages forever while the server keeps returning a
 *                        cursor, so the driver gives up after this long.
 *
 * Commands (JSON argument shape):
 *   upload                [records...]  or  {"records":[...], "batchSize":N}
 *   uploadDeviceTokens    same as upload
 *   profile               {"identity":"u1"} | {"email":"a@b.c"} | {"objectId":"..."}
 *   events                {"query":{...}, "batchSize":N}   (bare query object also accepted)
 *   profiles              {"query":{...}, "batchSize":N}   (bare query object also accepted)
 *   targets               {"action":"create|estimate|list|result|stop", "payload":{...}}
 *   getProfilesCount      <query object>      (alias: profiles_count)
 *   getEventsCount        <query object>      (alias: events_count)
 *   delete                <query object>
 *   demerge               <query object>
 *   subscribe             <query object>
 *   disassociate          <query object>
 *   getMessageReports     <query object>      (alias: message_reports)
 *   realTimeCounts        <query object>      (alias: now)
 *   topPropertyCounts     <query object>      (alias: top_property_counts)
 *   trends                <query object>
 *
 * Output: exactly one JSON line on stdout.
 *   success:  {"ok":true,"command":...,"endpoint":...,"result":<what the client resolved>}
 *             exit code 0. `result` is exactly the value the client's Promise
 *             resolved with (the server's parsed JSON body; for upload a single
 *             response object when there was one batch, else an array of
 *             per-batch responses; for events/profiles the array of all records
 *             collected across pages).
 *   failure:  {"ok":false,"command":...,"kind":...,"error":...,["result":...]}
 *             kind / exit code:
 *               "usage"            64  bad command line / JSON / environment
 *               "validation"        2  the client rejected the input itself
 *                                      (Promise rejected; no request was sent)
 *               "transport"         3  the client resolved its "error" sentinel:
 *                                      connection failed or the response body
 *                                      was not JSON (the client hides which)
 *               "timeout"           4  no result within PROPEL_CT_TIMEOUT_MS
 *               "exception"         1  anything else thrown
 * Anything the library itself logs (console.log / console.error) goes to stderr.
 */
"use strict";

const fs = require("fs");

// The library uses console.log for debug output and for the "region not
// provided" notice; keep stdout reserved for the single result line.
console.log = (...args) => console.error(...args);
console.info = console.log;

const CleverTap = require("clevertap");

const EXIT = { ok: 0, exception: 1, validation: 2, transport: 3, timeout: 4, usage: 64 };

let finished = false;
function finish(obj, code) {
  if (finished) return;
  finished = true;
  process.stdout.write(JSON.stringify(obj) + "\n", () => process.exit(code));
}

function fail(kind, command, error, extra) {
  const msg = error instanceof Error ? error.message : error;
  finish(Object.assign({ ok: false, command, kind, error: msg }, extra || {}), EXIT[kind]);
}

function resolveEndpoint(raw) {
  let s = String(raw).trim();
  if (!/^[a-zA-Z][a-zA-Z0-9+.-]*:\/\//.test(s)) s = "http://" + s;
  const u = new URL(s); // throws on garbage
  let path = u.pathname.replace(/\/+$/, "");
  if (path === "") path = "/1";
  return `${u.protocol}//${u.host}${path}`;
}

function readArg(arg) {
  if (arg === undefined) return undefined;
  let text = arg;
  if (arg === "-") text = fs.readFileSync(0, "utf8");
  else if (arg.startsWith("@")) text = fs.readFileSync(arg.slice(1), "utf8");
  return JSON.parse(text);
}

function queryAndOptions(arg) {
  // {"query":{...},"batchSize":N} or a bare query object
  if (arg && typeof arg === "object" && !Array.isArray(arg) && "query" in arg) {
    const options = {};
    if (arg.batchSize !== undefined) options.batchSize = arg.batchSize;
    if (arg.debug) options.debug = arg.debug;
    return [arg.query, options];
  }
  return [arg, {}];
}

const ALIASES = {
  profiles_count: "getProfilesCount",
  events_count: "getEventsCount",
  message_reports: "getMessageReports",
  now: "realTimeCounts",
  top_property_counts: "topPropertyCounts",
  upload_device_tokens: "uploadDeviceTokens",
};

const SIMPLE = [
  "getProfilesCount",
  "getEventsCount",
  "delete",
  "demerge",
  "subscribe",
  "disassociate",
  "getMessageReports",
  "realTimeCounts",
  "topPropertyCounts",
  "trends",
];

function invoke(ct, command, arg) {
  switch (command) {
    case "upload":
    case "uploadDeviceTokens": {
      let records = arg;
      const options = {};
      if (arg && !Array.isArray(arg) && typeof arg === "object") {
        records = arg.records;
        if (arg.batchSize !== undefined) options.batchSize = arg.batchSize;
        if (arg.debug) options.debug = arg.debug;
      }
      return ct[command](records, options);
    }
    case "profile":
      return ct.profile(Object.assign({}, arg || {}));
    case "events":
    case "profiles": {
      const [query, options] = queryAndOptions(arg);
      return ct[command](query, options);
    }
    case "targets": {
      if (!arg || typeof arg !== "object") throw new UsageError("targets needs {\"action\":...,\"payload\":...}");
      const options = {};
      if (arg.debug) options.debug = arg.debug;
      return ct.targets(arg.action, arg.payload, options);
    }
    default:
      if (SIMPLE.includes(command)) return ct[command](arg, {});
      throw new UsageError(`unknown command ${JSON.stringify(command)}`);
  }
}

class UsageError extends Error {}

function isTransportError(command, result) {
  if (result === "error") return true;
  if ((command === "upload" || command === "uploadDeviceTokens") && Array.isArray(result)) {
    return result.includes("error");
  }
  return false;
}

function main() {
  const [, , rawCommand, rawArg] = process.argv;
  const command = ALIASES[rawCommand] || rawCommand;
  if (!command) return fail("usage", null, "usage: clevertap_driver.js <command> [<json>|-|@file]");

  const env = process.env;
  for (const k of ["PROPEL_CT_ENDPOINT", "PROPEL_CT_ACCOUNT", "PROPEL_CT_PASSCODE"]) {
    if (!env[k]) return fail("usage", command, `environment variable ${k} is required`);
  }

  let endpoint, arg, ct;
  try {
    endpoint = resolveEndpoint(env.PROPEL_CT_ENDPOINT);
  } catch (e) {
    return fail("usage", command, `bad PROPEL_CT_ENDPOINT: ${e.message}`);
  }
  try {
    arg = readArg(rawArg);
  } catch (e) {
    return fail("usage", command, `bad JSON argument: ${e.message}`);
  }
  try {
    ct = CleverTap.init(env.PROPEL_CT_ACCOUNT, env.PROPEL_CT_PASSCODE, env.PROPEL_CT_REGION || "eu1");
  } catch (e) {
    return fail("usage", command, e);
  }
  // The client hard-codes https://<region>.api.clevertap.com/1 into the public
  // instance property `api.apiEndpoint` and reads it on every request
  // (`${this.apiEndpoint}/${endpoint}`); node-fetch handles http: URLs, so
  // overriding that property is the (only) way to point it elsewhere.
  ct.api.apiEndpoint = endpoint;

  const timeoutMs = Number(env.PROPEL_CT_TIMEOUT_MS || 30000);
  const timer = setTimeout(
    () => fail("timeout", command, `no result after ${timeoutMs} ms`, { endpoint }),
    timeoutMs
  );

  let promise;
  try {
    promise = invoke(ct, command, arg);
  } catch (e) {
    clearTimeout(timer);
    return fail(e instanceof UsageError ? "usage" : "exception", command, e, { endpoint });
  }
  Promise.resolve(promise).then(
    (result) => {
      clearTimeout(timer);
      if (result === undefined) result = null;
      if (isTransportError(command, result)) {
        return fail(
          "transport",
          command,
          "client resolved its 'error' sentinel (connection failed or non-JSON response body)",
          { endpoint, result }
        );
      }
      finish({ ok: true, command, endpoint, result }, EXIT.ok);
    },
    (err) => {
      clearTimeout(timer);
      // The client rejects with a plain string for input it refuses to send.
      if (typeof err === "string") return fail("validation", command, err, { endpoint });
      fail("exception", command, err, { endpoint });
    }
  );
}

main();
