// missive preview: renders through the server's JSON routes and re-renders whenever
// the server says the template set changed. Nothing here ever runs inside the email.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  template: null,
  example: 0,
  locale: "",
  width: localStorage.getItem("missive.width") || "wide",
  scheme: localStorage.getItem("missive.scheme") || "light",
  tab: "html",
  templates: [],
  edited: false, // the data was changed by hand: keep it across reloads
  html: "",
};

function readUrl() {
  const q = new URLSearchParams(location.search);
  state.template = q.get("t");
  state.example = Number(q.get("example") || 0);
  state.locale = q.get("locale") || "";
}

function writeUrl() {
  const q = new URLSearchParams();
  q.set("t", state.template);
  if (state.example) q.set("example", state.example);
  if (state.locale) q.set("locale", state.locale);
  history.replaceState(null, "", "/?" + q.toString().replace(/%2F/g, "/"));
}

async function getJson(url, options) {
  const response = await fetch(url, options);
  return response.json();
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

// --- the index and the pickers -------------------------------------------------

async function loadTemplates() {
  const body = await getJson("/api/templates");
  state.templates = body.templates;
  const list = $("index");
  list.replaceChildren();
  for (const t of body.templates) {
    const q = "/?t=" + encodeURIComponent(t.name).replace(/%2F/g, "/");
    const picks = el("span", { class: "picks" });
    for (let i = 0; i < t.examples; i++) {
      picks.append(el("a", { class: "pick", href: q + "&example=" + i, title: "example " + i }, "#" + i));
    }
    for (const l of t.locales) {
      picks.append(el("a", { class: "pick locale", href: q + "&locale=" + encodeURIComponent(l) }, l));
    }
    const item = el("li", { "data-template": t.name }, el("a", { class: "tpl", href: q }, t.name), picks);
    if (t.name === state.template) item.classList.add("current");
    list.append(item);
  }
  if (!state.template && body.templates.length) {
    state.template = body.templates[0].name;
    writeUrl();
  }
  fillPickers();
}

function current() {
  return state.templates.find((t) => t.name === state.template);
}

function fillPickers() {
  const t = current();
  const locale = $("locale");
  locale.replaceChildren(el("option", { value: "" }, "default"));
  const example = $("example");
  example.replaceChildren();
  if (!t) return;
  for (const l of t.locales) locale.append(el("option", { value: l }, l));
  locale.value = state.locale;
  const count = Math.max(t.examples, 1);
  for (let i = 0; i < count; i++) {
    example.append(el("option", { value: String(i) }, t.examples ? "#" + i : "none"));
  }
  example.value = String(Math.min(state.example, count - 1));
  for (const item of $("index").children) {
    item.classList.toggle("current", item.dataset.template === state.template);
  }
}

// --- data ----------------------------------------------------------------------

async function loadExample() {
  const t = current();
  let data = {};
  if (t && t.examples) {
    data = await getJson(
      "/api/example?template=" + encodeURIComponent(state.template) + "&example=" + state.example,
    );
  }
  $("data").value = JSON.stringify(data, null, 2);
  state.edited = false;
}

function showViolations(items) {
  const list = $("violations");
  list.replaceChildren();
  for (const v of items) {
    list.append(el("li", {}, el("code", {}, v.pointer || "(root)"), " ", v.message));
  }
}

// --- rendering -----------------------------------------------------------------

let renderSeq = 0;

async function render() {
  if (!state.template) return;
  $("title").textContent = state.template;
  document.title = state.template + " · missive preview";
  let data;
  try {
    data = JSON.parse($("data").value || "{}");
  } catch (e) {
    showViolations([{ pointer: "", message: "not valid JSON: " + e.message }]);
    return;
  }
  const seq = ++renderSeq;
  const body = await getJson("/api/render", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      template: state.template,
      example: state.example,
      locale: state.locale || null,
      data,
    }),
  });
  if (seq !== renderSeq) return; // a newer render is on its way
  if (body.ok) showMessage(body);
  else showFailure(body);
}

function showMessage(m) {
  $("error").hidden = true;
  $("error").replaceChildren();
  document.body.classList.remove("failed");
  showViolations([]);
  $("envelope").hidden = false;
  $("subject").textContent = m.subject;
  const rows = [
    ["From", m.from],
    ["To", m.to.join(", ")],
    ["Cc", m.cc.join(", ")],
    ["Bcc", m.bcc.join(", ")],
    ["Reply-To", m.reply_to],
  ];
  for (const [k, v] of Object.entries(m.headers)) rows.push([k, v]);
  if (m.tags.length) rows.push(["Tags", m.tags.join(", ")]);
  const dl = $("headers");
  dl.replaceChildren();
  for (const [k, v] of rows) {
    if (!v) continue;
    dl.append(el("dt", {}, k), el("dd", {}, v));
  }
  const size = $("size");
  size.replaceChildren(
    el("span", { title: "HTML part, CSS inlined" }, "HTML " + kb(m.size.html)),
    " · ",
    el("span", { title: "The whole MIME message" }, "message " + kb(m.size.eml)),
  );
  if (m.size.clipped) {
    size.append(el("span", { class: "warn" }, "Gmail clips HTML over 102 KB"));
  }
  $("text").textContent = m.text == null ? "(no text part: text: false)" : m.text;
  $("eml").textContent = m.eml;
  $("download").href = URL.createObjectURL(new Blob([m.eml], { type: "message/rfc822" }));
  $("download").download = state.template.replace(/\//g, "-") + ".eml";
  state.html = m.html;
  showFrame();
}

function kb(bytes) {
  return (bytes / 1024).toFixed(1) + " KB";
}

function showFrame() {
  let html = state.html;
  if (state.scheme === "dark") {
    // Apply the email's own dark-mode rules, as a client in dark mode would.
    html = html
      .replace(/prefers-color-scheme\s*:\s*dark/g, "min-width: 0px")
      .replace(/prefers-color-scheme\s*:\s*light/g, "max-width: 0px");
  }
  $("mail").srcdoc = html;
}

function fitFrame() {
  const frame = $("mail");
  const doc = frame.contentDocument;
  if (doc && doc.documentElement) {
    frame.style.height = Math.max(doc.documentElement.scrollHeight, 200) + "px";
  }
}

function showFailure(body) {
  const box = $("error");
  box.replaceChildren();
  const titles = {
    load: "The templates on disk do not load — sending keeps the last version that did",
    render: "This template does not render",
    data: "The data does not match the template's schema",
    missing: "No such template or example (renamed or deleted?)",
  };
  box.append(el("h2", {}, titles[body.stage] || "Error"));
  const violations = [];
  for (const p of body.problems) {
    const item = el("div", { class: "problem" });
    const where = p.location ? p.location.file + ":" + p.location.line + ":" + p.location.column : "";
    item.append(el("p", { class: "where" }, el("code", {}, where), " ", el("span", { class: "kind" }, p.kind)));
    item.append(el("p", { class: "message" }, p.message));
    if (p.excerpt.length) {
      const pre = el("pre", { class: "excerpt" });
      for (const line of p.excerpt) {
        pre.append(el("span", { class: line.hit ? "line hit" : "line" }, el("b", {}, String(line.line)), line.text), "\n");
      }
      item.append(pre);
    }
    violations.push(...p.violations);
    if (p.violations.length) {
      item.append(el("ul", {}, ...p.violations.map((v) => el("li", {}, el("code", {}, v.pointer || "(root)"), " ", v.message))));
    }
    box.append(item);
  }
  showViolations(violations);
  box.hidden = false;
  document.body.classList.add("failed");
  $("envelope").hidden = true;
  $("size").replaceChildren();
}

// --- live reload ---------------------------------------------------------------

function connect() {
  const live = $("live");
  const events = new EventSource("/events");
  events.addEventListener("state", (e) => {
    const now = JSON.parse(e.data);
    live.textContent = now.error ? "live · templates do not load" : "live";
    live.className = now.error ? "live broken" : "live on";
    // With no template to render (none ever loaded), show why here.
    if (now.error && !state.template) showFailure({ stage: "load", problems: now.error });
  });
  events.addEventListener("reload", async () => {
    await loadTemplates();
    if (!state.edited) await loadExample();
    await render();
    live.textContent = "live · reloaded " + new Date().toLocaleTimeString();
    live.className = "live on";
  });
  events.addEventListener("failed", async (e) => {
    if (state.template) await render();
    else showFailure({ stage: "load", problems: JSON.parse(e.data).error });
    live.textContent = "live · broken since " + new Date().toLocaleTimeString();
    live.className = "live broken";
  });
  events.onerror = () => {
    live.textContent = "reconnecting…";
    live.className = "live off";
  };
}

// --- controls ------------------------------------------------------------------

async function pick(template, example, locale) {
  const changed = template !== state.template || example !== state.example;
  state.template = template;
  state.example = example;
  state.locale = locale;
  writeUrl();
  fillPickers();
  if (changed) await loadExample();
  await render();
}

function setWidth(width) {
  state.width = width;
  localStorage.setItem("missive.width", width);
  $("stage").dataset.width = width;
  for (const b of $("width").children) b.classList.toggle("on", b.dataset.width === width);
}

function setScheme(scheme) {
  state.scheme = scheme;
  localStorage.setItem("missive.scheme", scheme);
  $("stage").dataset.scheme = scheme;
  for (const b of $("scheme").children) b.classList.toggle("on", b.dataset.scheme === scheme);
  if (state.html) showFrame();
}

function setTab(tab) {
  state.tab = tab;
  for (const b of document.querySelectorAll(".tabs button")) b.classList.toggle("on", b.dataset.tab === tab);
  for (const name of ["html", "text", "eml"]) $("pane-" + name).hidden = name !== tab;
}

async function start() {
  readUrl();
  $("index").addEventListener("click", (e) => {
    const a = e.target.closest("a");
    if (!a) return;
    e.preventDefault();
    const q = new URL(a.href).searchParams;
    pick(q.get("t"), Number(q.get("example") || 0), q.get("locale") || "");
  });
  $("locale").addEventListener("change", (e) => pick(state.template, state.example, e.target.value));
  $("example").addEventListener("change", (e) => pick(state.template, Number(e.target.value), state.locale));
  $("width").addEventListener("click", (e) => e.target.dataset.width && setWidth(e.target.dataset.width));
  $("scheme").addEventListener("click", (e) => e.target.dataset.scheme && setScheme(e.target.dataset.scheme));
  document.querySelector(".tabs").addEventListener("click", (e) => e.target.dataset.tab && setTab(e.target.dataset.tab));
  $("data").addEventListener("input", () => (state.edited = true));
  $("data").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      render();
    }
  });
  $("render").addEventListener("click", render);
  $("reset").addEventListener("click", async () => {
    await loadExample();
    await render();
  });
  $("mail").addEventListener("load", fitFrame);
  setWidth(state.width);
  setScheme(state.scheme);
  await loadTemplates();
  if (state.template) {
    writeUrl();
    await loadExample();
    await render();
  }
  connect();
}

start();
