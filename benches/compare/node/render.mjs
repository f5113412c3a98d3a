// Node peer of the comparison: nunjucks (autoescape) + juice, the email-templates stack.
//
// Per message: render the front-matter `subject` (no escaping) and the HTML body with
// the example data, then juice.juiceResources() with the options email-templates uses
// (preserveImportant, webResources relative to templates/, images off), which reads
// templates/styles/email.css for <link rel="stylesheet" href="styles/email.css">.
// Compiled templates are cached by the nunjucks environment, as in a long-running app.
//
// nunjucks adaptations (in the loader, never in the templates; see README.md):
//   * the YAML front-matter is stripped before nunjucks sees the file.
//
// Protocol shared by every runner: one round whose outputs go to OUT/outputs.json,
// more untimed rounds for --warmup seconds (JIT, caches), then whole rounds until
// --budget seconds and --min-messages are both reached; one JSON line on stdout.

import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { parseArgs } from "node:util";

import juice from "juice";
import nunjucks from "nunjucks";

const require = createRequire(import.meta.url);

const { values: args } = parseArgs({
  options: {
    corpus: { type: "string" },
    templates: { type: "string" },
    out: { type: "string" },
    budget: { type: "string", default: "3" },
    warmup: { type: "string", default: "1" },
    "min-messages": { type: "string", default: "200" },
  },
});
for (const key of ["corpus", "templates", "out"]) {
  if (!args[key]) throw new Error(`--${key} is required`);
}
const templates = path.resolve(args.templates);
const budget = Number(args.budget);
const minMessages = Number(args["min-messages"]);

/** (front-matter text, body) of a template file: YAML between two `---` lines. */
function splitFrontMatter(text) {
  const lines = text.split("\n");
  if (lines[0].replace(/\r$/, "") !== "---") return ["", text];
  for (let i = 1; i < lines.length; i++) {
    if (lines[i].replace(/\r$/, "") === "---") {
      return [lines.slice(1, i).join("\n"), lines.slice(i + 1).join("\n")];
    }
  }
  throw new Error("front-matter has no closing ---");
}

/** The `subject:` value of the front-matter (a double-quoted or plain YAML scalar). */
function subjectOf(frontMatter, file) {
  const line = frontMatter.split("\n").find((l) => l.startsWith("subject:"));
  if (!line) throw new Error(`${file}: no subject`);
  const value = line.slice("subject:".length).trim();
  return value.startsWith('"') ? JSON.parse(value) : value;
}

const FrontMatterLoader = nunjucks.Loader.extend({
  getSource(name) {
    const full = path.resolve(templates, name);
    if (!full.startsWith(templates + path.sep) || !fs.existsSync(full)) return null;
    const [, body] = splitFrontMatter(fs.readFileSync(full, "utf8"));
    return { src: body, path: full, noCache: false };
  },
});

const htmlEnv = new nunjucks.Environment(new FrontMatterLoader(), { autoescape: true });
const textEnv = new nunjucks.Environment(null, { autoescape: false });

const corpus = JSON.parse(fs.readFileSync(args.corpus, "utf8"));
const subjects = new Map();
for (const entry of corpus) {
  if (subjects.has(entry.file)) continue;
  const [frontMatter] = splitFrontMatter(fs.readFileSync(path.join(templates, entry.file), "utf8"));
  subjects.set(entry.file, nunjucks.compile(subjectOf(frontMatter, entry.file), textEnv));
}

// The options email-templates passes to juice.juiceResources.
const juiceOptions = {
  preserveImportant: true,
  webResources: { relativeTo: templates, images: false, scripts: false },
};
const REMOTE_SHEET = /<link\b[^>]*\bhref\s*=\s*["']?(?:https?:)?\/\//i;

function juiceResources(html) {
  if (REMOTE_SHEET.test(html)) throw new Error("refusing to inline a remote stylesheet");
  return new Promise((resolve, reject) => {
    juice.juiceResources(html, juiceOptions, (err, out) => (err ? reject(err) : resolve(out)));
  });
}

async function render(entry) {
  const subject = subjects.get(entry.file).render(entry.data);
  const html = await juiceResources(htmlEnv.render(entry.file, entry.data));
  return [subject, html];
}

const outputs = {};
for (const entry of corpus) {
  const [subject, html] = await render(entry);
  outputs[entry.id] = { subject, html };
}
fs.mkdirSync(args.out, { recursive: true });
fs.writeFileSync(path.join(args.out, "outputs.json"), JSON.stringify(outputs));

const warmupEnd = process.hrtime.bigint() + BigInt(Math.round(Number(args.warmup) * 1e9));
while (process.hrtime.bigint() < warmupEnd) {
  for (const entry of corpus) await render(entry);
}

let messages = 0;
let rounds = 0;
let seconds = 0;
const perEntry = Object.fromEntries(corpus.map((e) => [e.id, 0]));
const cpuStart = process.cpuUsage();
const start = process.hrtime.bigint();
for (;;) {
  for (const entry of corpus) {
    const one = process.hrtime.bigint();
    await render(entry);
    perEntry[entry.id] += Number(process.hrtime.bigint() - one) / 1e9;
  }
  messages += corpus.length;
  rounds += 1;
  seconds = Number(process.hrtime.bigint() - start) / 1e9;
  if (seconds >= budget && messages >= minMessages) break;
}

const cpuSeconds = ({ user, system }) => (user + system) / 1e6;
const version = (name) => require(`${name}/package.json`).version;
console.log(
  JSON.stringify({
    peer: "nunjucks-juice",
    versions: { nunjucks: version("nunjucks"), juice: version("juice"), node: process.versions.node },
    messages,
    rounds,
    seconds,
    cpu_seconds: cpuSeconds(process.cpuUsage(cpuStart)),
    per_entry: perEntry,
  }),
);
