"""Checks that the peers' outputs agree with missive's and prints the comparison table.

  report.py render --dir target/compare/render [--allow-mismatch]
      DIR/results.jsonl   one JSON line per peer run (from the runners)
      DIR/loads.tsv       peer, repeat, 1-minute load average before that run
      DIR/out/PEER/outputs.json   {id: {subject, html}} of every corpus entry
  report.py send --dir target/compare/send [--connections C]
      DIR/LOAD/results.jsonl, DIR/LOAD/loads.tsv   as above, for each sink load
      (quiet: the sink's core idle; busy: a CPU burner pinned beside the sink)

Each writes DIR/report.md; target/compare/report.md is both sections put together
(the `run` script does that) with the machine they ran on.

Agreement, per corpus entry (template x example), missive's output being the reference:
  * subject: equal strings;
  * visible text: the text of <body> with tags stripped, entities decoded, no-break
    spaces as spaces and whitespace collapsed, equal strings;
  * styled elements: the start tags of <body> (tbody/thead/tfoot left out: HTML5
    parsers add them, others don't) aligned by tag sequence; for each element that
    carries a style attribute in either output, the same set of CSS properties, and
    the same values once formatting is normalised (case, quotes, spaces, trailing
    `;`, #abc = #aabbcc, 0px = 0). Duplicate properties in one attribute: the last
    one wins, as in a browser.
  A peer that renders without inlining (minijinja-render-only) is held to the subject
  and the visible text only.
Exit status 1 on any mismatch unless --allow-mismatch.
"""

import argparse
import difflib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

REFERENCE = "missive"
# Peers that render without inlining: only their subject and visible text are compared.
RENDER_ONLY = {"minijinja-render-only"}
SKIPPED_TAGS = {"tbody", "thead", "tfoot"}
HIDDEN = {"head", "style", "script", "title", "template"}
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
PEER_LABELS = {
    "missive": "missive",
    "nunjucks-juice": "nunjucks + juice (Node)",
    "jinja2-premailer": "Jinja2 + premailer (Python)",
    "minijinja-css-inline": "minijinja-py + css_inline (Python)",
    "minijinja-render-only": "minijinja-py render only, no inlining (Python)",
    "nodemailer": "Nodemailer pool (Node)",
}


class Page(HTMLParser):
    """Visible text of <body> and its start tags with their style attributes."""

    def __init__(self, html):
        super().__init__(convert_charrefs=True)
        self.text = []
        self.elements = []  # (tag, style attribute or None, text that follows)
        self.hidden = 0
        self.in_body = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        if tag == "body":
            self.in_body = True
        if tag in HIDDEN and tag not in VOID:
            self.hidden += 1
        if self.in_body and not self.hidden and tag not in SKIPPED_TAGS:
            self.elements.append([tag, dict(attrs).get("style"), ""])

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag in HIDDEN and tag not in VOID:
            self.hidden -= 1

    def handle_endtag(self, tag):
        if tag in HIDDEN and tag not in VOID and self.hidden:
            self.hidden -= 1

    def handle_data(self, data):
        if self.in_body and not self.hidden:
            self.text.append(data)
            if self.elements:
                self.elements[-1][2] += data

    def visible_text(self):
        return collapse("".join(self.text))


def collapse(text):
    return " ".join(text.replace("\xa0", " ").split())


def split_declarations(style):
    """`a: b; c: d` -> [(a, b), (c, d)], minding quotes and parentheses."""
    out, buf, quote, depth = [], "", None, 0
    for ch in style + ";":
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == ";" and depth == 0:
            if ":" in buf:
                name, _, value = buf.partition(":")
                out.append((name.strip().lower(), value.strip()))
            buf = ""
            continue
        buf += ch
    return out


HEX3 = re.compile(r"#([0-9a-f])([0-9a-f])([0-9a-f])\b")
ZERO = re.compile(r"(?<![\w.#-])0(?:px|pt|em|rem|%)(?![\w%])")


def normalise_value(value):
    value = value.lower().replace("'", '"')
    value = re.sub(r"\s*!\s*important", " !important", value)
    value = re.sub(r"\s*([,/])\s*", r"\1", value)
    value = " ".join(value.split())
    value = HEX3.sub(r"#\1\1\2\2\3\3", value)
    return ZERO.sub("0", value)


def declarations(style):
    effective = {}
    for name, value in split_declarations(style or ""):
        effective[name] = normalise_value(value)
    return effective


STYLE_BLOCK = re.compile(r"<style\b[^>]*>(.*?)</style\s*>", re.S | re.I)
COMMENT = re.compile(r"/\*.*?\*/", re.S)


def head_rules(html):
    """What stays in the head's <style>: @media blocks, pseudo-class selectors, !important."""
    head = html[: html.lower().find("<body")]
    css = COMMENT.sub("", "".join(STYLE_BLOCK.findall(head)))
    pseudo = sorted({s.strip() for s in re.findall(r"([^{};]*:(?:hover|active|focus|visited)[^{]*)\{", css)})
    return {
        "@media blocks": len(re.findall(r"@media\b", css)),
        "pseudo-class rules": pseudo,
        "!important": len(re.findall(r"!\s*important", css)),
    }


def element_label(tag, text):
    text = collapse(text)
    return f"<{tag}>" + (f" {text[:40]!r}" if text else "")


def compare_entry(ref_html, peer_html, styles=True):
    """Problems found between missive's and a peer's HTML: list of (kind, detail).
    Without `styles`, only the visible text (a peer that does not inline)."""
    ref, peer = Page(ref_html), Page(peer_html)
    problems = []
    if not styles:
        a, b = ref.visible_text(), peer.visible_text()
        return [("text", word_diff(a, b))] if a != b else []
    ha, hb = head_rules(ref_html), head_rules(peer_html)
    for key in ha:
        if ha[key] != hb[key]:
            problems.append(("head (note)", f"{key} kept in <head>: missive {ha[key]}, peer {hb[key]}"))
    a, b = ref.visible_text(), peer.visible_text()
    if a != b:
        problems.append(("text", word_diff(a, b)))
    tags_a = [e[0] for e in ref.elements]
    tags_b = [e[0] for e in peer.elements]
    matcher = difflib.SequenceMatcher(None, tags_a, tags_b, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            for ea, eb in zip(ref.elements[i1:i2], peer.elements[j1:j2]):
                if ea[1] is None and eb[1] is None:
                    continue
                da, db = declarations(ea[1]), declarations(eb[1])
                label = element_label(ea[0], ea[2])
                if set(da) != set(db):
                    only_a = sorted(set(da) - set(db))
                    only_b = sorted(set(db) - set(da))
                    problems.append(
                        ("properties", f"{label}: only in missive {only_a or '-'}, only in peer {only_b or '-'}")
                    )
                diff = [f"{k}: {da[k]!r} vs {db[k]!r}" for k in sorted(set(da) & set(db)) if da[k] != db[k]]
                if diff:
                    problems.append(("values", f"{label}: " + "; ".join(diff)))
        else:
            styled_a = [element_label(e[0], e[2]) for e in ref.elements[i1:i2] if e[1]]
            styled_b = [element_label(e[0], e[2]) for e in peer.elements[j1:j2] if e[1]]
            if styled_a or styled_b:
                problems.append(
                    ("elements", f"styled elements not matched: missive {styled_a or '-'}, peer {styled_b or '-'}")
                )
    return problems


def word_diff(a, b, context=6):
    wa, wb = a.split(" "), b.split(" ")
    parts = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, wa, wb, autojunk=False).get_opcodes():
        if op == "equal":
            continue
        before = " ".join(wa[max(0, i1 - context) : i1])
        after = " ".join(wa[i2 : i2 + context])
        parts.append(f"…{before} [-{' '.join(wa[i1:i2])}-] {{+{' '.join(wb[j1:j2])}+}} {after}…")
        if len(parts) == 3:
            parts.append("…")
            break
    return " | ".join(parts)


def check(directory, peers):
    """Per peer: {kind: [(entry id, detail)]}."""
    ref = json.loads((directory / "out" / REFERENCE / "outputs.json").read_text(encoding="utf-8"))
    found = {}
    for peer in peers:
        if peer == REFERENCE:
            continue
        outputs = json.loads((directory / "out" / peer / "outputs.json").read_text(encoding="utf-8"))
        problems = found.setdefault(peer, {})
        for entry_id, expected in ref.items():
            got = outputs.get(entry_id)
            if got is None:
                problems.setdefault("missing", []).append((entry_id, "no output"))
                continue
            if expected["subject"] != got["subject"]:
                problems.setdefault("subject", []).append(
                    (entry_id, f"{expected['subject']!r} vs {got['subject']!r}")
                )
            for kind, detail in compare_entry(expected["html"], got["html"], peer not in RENDER_ONLY):
                problems.setdefault(kind, []).append((entry_id, detail))
    return found


def read_results(directory):
    runs = {}
    with open(directory / "results.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                result = json.loads(line)
                runs.setdefault(result["peer"], []).append(result)
    return runs


def read_loads(directory):
    loads = []
    for path in sorted(directory.glob("**/loads.tsv")):
        loads += [float(line.split("\t")[2]) for line in path.read_text().splitlines() if line.strip()]
    return loads


def command_output(*argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def machine(loads):
    model = "?"
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    lines = [
        f"- Machine: {os.cpu_count()} CPUs (nproc {command_output('nproc')}), {model}, "
        f"{platform.system()} {platform.release()}",
        f"- Toolchains: {command_output('rustc', '--version')}, Node {command_output('node', '--version')}, "
        f"Python {platform.python_version()}",
        f"- missive at commit {command_output('git', 'rev-parse', '--short', 'HEAD')}"
        + (" with uncommitted changes" if command_output("git", "status", "--porcelain", "--", "src") else ""),
    ]
    if loads:
        lines.append(
            f"- 1-minute load average before each peer run: {min(loads):.2f}–{max(loads):.2f} "
            "(other work on the machine shares both cores; each peer is pinned to core 0)"
        )
    return lines


# Targets: missive at least this many times the peer, per core, same run (issue 5; issue
# 14.1 for the render-only bound: the full render at least half its rate).
TARGETS = {"nunjucks-juice": 25, "minijinja-css-inline": 2, "minijinja-render-only": 0.5}
# Issue 14's sending targets, missive ÷ Nodemailer's pool, by the load on the sink's core.
SEND_TARGETS = {"quiet": 20, "busy": 15}
SINK_LOADS = {
    "quiet": "the sink's core otherwise idle",
    "busy": "a CPU-burning process pinned to the sink's core beside it",
}


def rates(runs):
    """(median messages/s by wall clock, median CPU ms per message or None)."""
    wall = statistics.median(r["messages"] / r["seconds"] for r in runs)
    cpu = [1000 * r["cpu_seconds"] / r["messages"] for r in runs if r.get("cpu_seconds") is not None]
    return wall, (statistics.median(cpu) if cpu else None)


HEADER = ["peer", "messages/s", "range (runs)", "ms/message", "CPU ms/message", "missive ÷ peer", "versions"]


def rate_row(peer, runs, reference, target=None):
    """A table row; `reference` is missive's rates(), or None when missive has none;
    `target` the ratio missive must reach over this peer, if not the one in TARGETS."""
    per_run = [r["messages"] / r["seconds"] for r in runs]
    rate, cpu = rates(runs)
    spread = f"{min(per_run):,.0f}–{max(per_run):,.0f}" if len(per_run) > 1 else "-"
    ratio = "n/a"
    if reference:
        ratio = f"{reference[0] / rate:.2f}×"
        target = target or TARGETS.get(peer)
        if target:
            ratio += f" (target ≥ {target}×: {'met' if reference[0] / rate >= target else 'NOT met'})"
        if cpu and reference[1] and peer != REFERENCE:
            ratio += f"; by CPU time {cpu / reference[1]:.2f}×"
    versions = ", ".join(f"{k} {v}" for k, v in runs[0].get("versions", {}).items())
    cpu_text = f"{cpu:.3f}" if cpu is not None else "-"
    return [PEER_LABELS.get(peer, peer), f"{rate:,.1f}", spread, f"{1000 / rate:.3f}", cpu_text, ratio, versions]


def table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = lambda row: "| " + " | ".join(str(x).ljust(w) for x, w in zip(row, widths)) + " |"  # noqa: E731
    return [fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(r) for r in rows]


def per_template(corpus, runs, peers, ref_outputs):
    """Rows: template file, examples, HTML size, then ms/message per peer (× missive)."""
    files = sorted({c["file"] for c in corpus}, key=lambda f: [c["file"] for c in corpus].index(f))
    ms = {}
    for peer in peers:
        for f in files:
            ids = [c["id"] for c in corpus if c["file"] == f]
            samples = [
                1000 * sum(r["per_entry"][i] for i in ids) / (r["rounds"] * len(ids))
                for r in runs[peer]
                if "per_entry" in r
            ]
            ms[peer, f] = statistics.median(samples) if samples else None
    rows = []
    for f in files:
        ids = [c["id"] for c in corpus if c["file"] == f]
        size = sum(len(ref_outputs[i]["html"].encode()) for i in ids) / len(ids) / 1024
        row = [f, str(len(ids)), f"{size:.1f}"]
        for peer in peers:
            mine, theirs = ms[REFERENCE, f], ms[peer, f]
            if theirs is None:
                row.append("-")
            elif peer == REFERENCE or not mine:
                row.append(f"{theirs:.3f}")
            else:
                row.append(f"{theirs:.3f} ({theirs / mine:.1f}×)")
        rows.append(row)
    header = ["template", "examples", "HTML KiB (avg)"] + [f"{PEER_LABELS[p]} ms" for p in peers]
    return table(header, rows)


def render_report(directory, allow_mismatch):
    runs = read_results(directory)
    if REFERENCE not in runs:
        sys.exit("no missive result")
    peers = [
        p
        for p in ["missive", "nunjucks-juice", "jinja2-premailer", "minijinja-css-inline", "minijinja-render-only"]
        if p in runs
    ]
    reference = rates(runs[REFERENCE])
    corpus = json.loads((directory / "corpus.json").read_text(encoding="utf-8"))
    rows = [rate_row(p, runs[p], reference) for p in peers]
    repeats = max(len(r) for r in runs.values())

    found = check(directory, peers)
    ref_outputs = json.loads((directory / "out" / REFERENCE / "outputs.json").read_text(encoding="utf-8"))
    details = []
    total = 0
    summary = []
    for peer, problems in found.items():
        count = sum(len(v) for k, v in problems.items() if not k.endswith("(note)"))
        total += count
        kinds = ", ".join(f"{len(v)} {k}" for k, v in sorted(problems.items())) or "none"
        summary.append(f"- {PEER_LABELS[peer]} vs missive: {kinds}")
        for kind, items in sorted(problems.items()):
            details.append(f"\n## {peer}: {kind} ({len(items)})")
            details += [f"- {entry_id}: {detail}" for entry_id, detail in items]
    (directory / "mismatches.txt").write_text(
        "\n".join(details) + "\n" if details else "no mismatch\n", encoding="utf-8"
    )

    lines = [
        "### Render + inline, one core each",
        "",
        f"Corpus: {len(corpus)} messages per round ({len({c['file'] for c in corpus})} templates × "
        "their schema examples, the largest a "
        f"{max(c['bytes'] for c in corpus) / 1024:.0f} KiB data set); whole rounds for at least the time budget, "
        f"median of {repeats} run{'s' if repeats != 1 else ''} per peer, peers interleaved.",
        "",
        *table(HEADER, rows),
        "",
        "messages/s and ms/message are by wall clock; CPU ms/message is the process's own CPU time "
        "(user + system), which other work on the machine does not inflate.",
        "",
        "Per template (ms/message by wall clock, median of the runs; × = peer time ÷ missive time):",
        "",
        *per_template(corpus, runs, peers, ref_outputs),
        "",
        "Output agreement (subject, visible text, styled elements and their CSS properties, per template × example;"
        " \"(note)\" = rules kept in the head differ, reported but not failing):",
        *summary,
    ]
    verdict = "AGREE" if total == 0 else f"MISMATCH ({total} differences; details in {directory / 'mismatches.txt'})"
    lines += ["", f"Verdict: {verdict}"]
    (directory / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    if total:
        print("\nFirst differences:")
        shown = [
            f"- {peer} {kind}: {entry_id}: {detail}"
            for peer, problems in found.items()
            for kind, items in sorted(problems.items())
            if not kind.endswith("(note)")
            for entry_id, detail in items
        ]
        for line in shown[:12]:
            print(line if len(line) < 400 else line[:400] + "…")
    return 0 if total == 0 or allow_mismatch else 1


def send_report(directory, connections):
    lines = [
        f"### Sending: pre-rendered messages to smtp-sink on 127.0.0.1, {connections} connections each",
        "",
    ]
    rows = []
    for load, described in SINK_LOADS.items():
        if not (directory / load / "results.jsonl").exists():
            continue
        runs = read_results(directory / load)
        node = runs.get("nodemailer")
        ours = [r for r in runs.get("missive", []) if r.get("available")]
        reference = rates(ours) if ours else None
        if ours:
            rows.append([load] + rate_row("missive", ours, reference))
        else:
            reason = next((r.get("reason") for r in runs.get("missive", [])), "no result")
            lines += [f"missive, sink {load}: {reason}", ""]
        if node:
            rows.append([load] + rate_row("nodemailer", node, reference, SEND_TARGETS[load]))
        lines.append(f"- sink {load}: {described}")
    lines.append("")
    lines += table(["sink"] + HEADER, rows)
    sink = directory / "sink-count.txt"
    if sink.exists():
        lines += ["", sink.read_text(encoding="utf-8").strip()]
    (directory / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["render", "send", "machine"])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--allow-mismatch", action="store_true")
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()
    if args.mode == "render":
        sys.exit(render_report(args.dir, args.allow_mismatch))
    if args.mode == "send":
        sys.exit(send_report(args.dir, args.connections))
    print("\n".join(machine(read_loads(args.dir))))


if __name__ == "__main__":
    main()
