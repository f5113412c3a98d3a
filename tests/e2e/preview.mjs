// End-to-end test of `missive preview` in real headless Chromium.
//
// Starts the preview on a copy of the repository's templates, opens the page, edits
// template files on disk and checks that the page follows with no click: the change
// shows, a broken template shows its error (file, line, excerpt) instead of the mail,
// and fixing it clears the error. Screenshots go to tests/e2e/artifacts/.
//
// Env: MISSIVE_BIN (the built binary; required), CHROMIUM (default /usr/bin/chromium).

import { spawn } from "node:child_process";
import { cpSync, mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, "..", "..");
const artifacts = join(here, "artifacts");
// Generous: only a page that never updates should hit it.
const PATIENCE = 20_000;

const bin = process.env.MISSIVE_BIN;
if (!bin) throw new Error("set MISSIVE_BIN to the missive binary");

let passed = 0;
let failed = 0;
async function step(name, body) {
  try {
    await body();
    passed++;
    console.log(`ok - ${name}`);
  } catch (e) {
    failed++;
    console.log(`not ok - ${name}\n  ${String(e.stack || e).split("\n").join("\n  ")}`);
    throw e;
  }
}

const work = mkdtempSync(join(tmpdir(), "missive-e2e-"));
const templates = join(work, "templates");
const schemas = join(work, "schemas");
cpSync(join(repo, "templates"), templates, { recursive: true });
cpSync(join(repo, "schemas"), schemas, { recursive: true });
mkdirSync(artifacts, { recursive: true });

const server = spawn(bin, ["--templates", templates, "--schemas", schemas, "preview", "--port", "0"], {
  stdio: ["ignore", "pipe", "inherit"],
});
const url = await new Promise((resolve, reject) => {
  let out = "";
  const timer = setTimeout(() => reject(new Error("preview never printed its URL: " + out)), PATIENCE);
  server.stdout.on("data", (chunk) => {
    out += chunk;
    const found = out.match(/http:\/\/127\.0\.0\.1:\d+\//);
    if (found) {
      clearTimeout(timer);
      resolve(found[0]);
    }
  });
  server.on("exit", (code) => reject(new Error(`preview exited with ${code}: ${out}`)));
});

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});

const welcome = join(templates, "welcome.html");
const original = readFileSync(welcome, "utf8");
const edited = original
  .replace("Welcome aboard, {{ user.first_name }}!", "Glad you are here, {{ user.first_name }}!")
  .replace('subject: "Welcome to', 'subject: "Say hello to');
const broken = edited.replace("<h1>", "{% if user.first_name %}\n<h1>");

try {
  const page = await browser.newPage({ viewport: { width: 1440, height: 960 } });
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  const mail = page.frameLocator("#mail");

  await step("the index lists every template with its examples and locales", async () => {
    await page.goto(url + "?t=welcome");
    for (const name of ["welcome", "account/password-reset", "orders/receipt", "digest"]) {
      await page.locator(`#index li[data-template="${name}"]`).waitFor({ timeout: PATIENCE });
    }
    await page.locator('#index li[data-template="welcome"] .pick.locale', { hasText: "fr" }).waitFor();
    await page.locator('#index li[data-template="welcome"] .pick', { hasText: "#2" }).waitFor();
  });

  await step("the page shows the rendered mail, its envelope, text and raw source", async () => {
    await mail.locator("h1", { hasText: "Welcome aboard, Ada!" }).waitFor({ timeout: PATIENCE });
    await page.locator("#subject", { hasText: "Welcome to Acme Cloud, Ada!" }).waitFor();
    await page.locator("#headers", { hasText: "ada@example.com" }).waitFor();
    await page.locator("#live", { hasText: "live" }).waitFor({ timeout: PATIENCE });
    const text = await page.locator("#text").textContent();
    if (!text.includes("Welcome aboard, Ada!")) throw new Error("text part missing: " + text.slice(0, 200));
    const eml = await page.locator("#eml").textContent();
    if (!/Content-Type: multipart\/alternative/.test(eml)) throw new Error("raw source missing");
    const size = await page.locator("#size").textContent();
    if (!/HTML [\d.]+ KB · message [\d.]+ KB/.test(size)) throw new Error("size missing: " + size);
    const sandbox = await page.locator("#mail").getAttribute("sandbox");
    if (sandbox.includes("allow-scripts")) throw new Error("the mail frame may run scripts: " + sandbox);
    // The frame holds the HTML exactly as rendered for sending: nothing injected.
    const sent = await page.evaluate(async () => {
      const response = await fetch("/api/render", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ template: "welcome", example: 0 }),
      });
      return (await response.json()).html;
    });
    const shown = await page.locator("#mail").getAttribute("srcdoc");
    if (shown !== sent) throw new Error("the frame does not hold the HTML as sent");
  });

  await step("saving a template updates the page without a click", async () => {
    writeFileSync(welcome, edited);
    await mail.locator("h1", { hasText: "Glad you are here, Ada!" }).waitFor({ timeout: PATIENCE });
    await page.locator("#subject", { hasText: "Say hello to Acme Cloud, Ada!" }).waitFor({ timeout: PATIENCE });
    await page.locator("#live", { hasText: "reloaded" }).waitFor({ timeout: PATIENCE });
    await page.screenshot({ path: join(artifacts, "preview.png") });
  });

  await step("a broken template shows its error with file, line and excerpt instead of the mail", async () => {
    writeFileSync(welcome, broken);
    const error = page.locator("#error");
    await error.locator(".where", { hasText: "welcome.html:" }).waitFor({ timeout: PATIENCE });
    await error.locator(".excerpt .hit").first().waitFor();
    const excerpt = await error.locator(".excerpt").first().textContent();
    if (!excerpt.includes("{% if user.first_name %}") && !excerpt.includes("endblock")) {
      throw new Error("excerpt does not show the broken lines: " + excerpt);
    }
    if (await page.locator("#pane-html").isVisible()) throw new Error("the stale mail is still shown");
    await page.locator("#live", { hasText: "broken" }).waitFor({ timeout: PATIENCE });
    await page.screenshot({ path: join(artifacts, "preview-error.png") });
  });

  await step("fixing the template clears the error", async () => {
    writeFileSync(welcome, edited);
    await page.locator("#error").waitFor({ state: "hidden", timeout: PATIENCE });
    await mail.locator("h1", { hasText: "Glad you are here, Ada!" }).waitFor({ timeout: PATIENCE });
  });

  await step("edited data is re-rendered, schema violations show inline", async () => {
    await page.locator("#data").fill(JSON.stringify({ user: { first_name: "Grace" } }));
    await page.locator("#render").click();
    await page.locator("#violations li", { hasText: "/user" }).first().waitFor({ timeout: PATIENCE });
    await page.locator("#violations li", { hasText: "dashboard_url" }).first().waitFor();
    const data = JSON.parse(readFileSync(join(schemas, "welcome.schema.json"), "utf8")).examples[0];
    data.user.first_name = "Grace";
    await page.locator("#data").fill(JSON.stringify(data, null, 2));
    await page.locator("#render").click();
    await mail.locator("h1", { hasText: "Glad you are here, Grace!" }).waitFor({ timeout: PATIENCE });
    await page.locator("#violations li").first().waitFor({ state: "detached" });
  });

  await step("narrow, dark and locale views", async () => {
    await page.locator('#width button[data-width="narrow"]').click();
    const width = await page.locator("#mail").evaluate((f) => f.getBoundingClientRect().width);
    if (Math.round(width) !== 375) throw new Error("narrow width is " + width);
    await page.locator('#scheme button[data-scheme="dark"]').click();
    await page.locator("#stage[data-scheme=dark]").waitFor();
    await page.screenshot({ path: join(artifacts, "preview-narrow-dark.png") });
    await page.locator('#width button[data-width="wide"]').click();
    await page.locator('#scheme button[data-scheme="light"]').click();
    await page.locator("#reset").click();
    await page.locator("#locale").selectOption("fr");
    await page.locator("#subject", { hasText: "Bienvenue" }).waitFor({ timeout: PATIENCE });
  });

  await step("a new template appears by itself, and its scripts never run", async () => {
    writeFileSync(
      join(templates, "script-probe.html"),
      '---\nsubject: Probe\nto: probe@example.test\n---\n<p id="probe">static</p>\n' +
        "<script>document.getElementById('probe').textContent = 'SCRIPT RAN'; parent.document.title = 'pwned';</script>\n",
    );
    const link = page.locator('#index li[data-template="script-probe"] a.tpl');
    await link.waitFor({ timeout: PATIENCE });
    await link.click();
    await mail.locator("#probe").waitFor({ timeout: PATIENCE });
    const probe = await mail.locator("#probe").textContent();
    if (probe !== "static") throw new Error("a script in the template ran: " + probe);
    if ((await page.title()) === "pwned") throw new Error("a script in the template reached the page");
  });

  await step("the page itself raised no script errors", async () => {
    if (pageErrors.length) throw new Error(pageErrors.join("\n"));
  });
} finally {
  await browser.close();
  server.kill();
  rmSync(work, { recursive: true, force: true });
  console.log(`${passed} passed, ${failed} failed`);
}
