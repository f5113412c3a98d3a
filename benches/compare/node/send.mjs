// Node peer of the sending comparison: Nodemailer's pooled SMTP transport.
//
// Reads the fixed, pre-rendered message (WORK/message.json: from, to, subject, html,
// text, written by missive's runner from the `welcome` template's first example) and
// sends it N times through one pooled transport (pool: true, maxConnections: C,
// secure: false, ignoreTLS: true) to smtp-sink on 127.0.0.1:PORT. All N sendMail()
// calls are made at once and the pool queues them, as missive's side does; per
// message Nodemailer builds the MIME message (multipart/alternative, quoted-printable
// or base64 parts, Message-ID, Date) and runs MAIL FROM / RCPT TO / DATA on a pooled
// connection. maxMessages is lifted so no connection is recycled mid-run.
//
// Usage: node send.mjs --message WORK/message.json --port PORT [--messages N] [--connections C]
// Prints one JSON line.

import fs from "node:fs";
import { createRequire } from "node:module";
import { parseArgs } from "node:util";

import nodemailer from "nodemailer";

const require = createRequire(import.meta.url);

const { values: args } = parseArgs({
  options: {
    message: { type: "string" },
    port: { type: "string" },
    messages: { type: "string", default: "2000" },
    connections: { type: "string", default: "4" },
  },
});
if (!args.message || !args.port) throw new Error("--message and --port are required");
const count = Number(args.messages);
const connections = Number(args.connections);
const message = JSON.parse(fs.readFileSync(args.message, "utf8"));

const transport = nodemailer.createTransport({
  host: "127.0.0.1",
  port: Number(args.port),
  secure: false,
  ignoreTLS: true,
  pool: true,
  maxConnections: connections,
  maxMessages: Infinity,
  logger: false,
});

async function sendAll(n) {
  const mail = {
    from: message.from,
    to: message.to,
    subject: message.subject,
    html: message.html,
    text: message.text,
  };
  const results = await Promise.allSettled(Array.from({ length: n }, () => transport.sendMail(mail)));
  const failed = results.filter((r) => r.status === "rejected");
  if (failed.length) throw new Error(`${failed.length} of ${n} sends failed, first: ${failed[0].reason}`);
}

await sendAll(connections * 4); // warm-up: open the pool's connections
const cpuStart = process.cpuUsage();
const start = process.hrtime.bigint();
await sendAll(count);
const seconds = Number(process.hrtime.bigint() - start) / 1e9;
const cpu = process.cpuUsage(cpuStart);
transport.close();

console.log(
  JSON.stringify({
    peer: "nodemailer",
    versions: { nodemailer: require("nodemailer/package.json").version, node: process.versions.node },
    messages: count,
    connections,
    seconds,
    cpu_seconds: (cpu.user + cpu.system) / 1e6,
  }),
);
