"""Python peers of the comparison: render (subject + HTML body) and inline CSS.

  --peer jinja2-premailer       Jinja2 (autoescape) + premailer
  --peer minijinja-css-inline   minijinja-py (autoescape) + css_inline
  --peer minijinja-render-only  minijinja-py (autoescape) alone: subject and body, nothing
                                else (no inlining), the bound missive's full render aims at

Per message each peer renders the front-matter `subject` (no escaping) and the HTML
body with the example data, then inlines templates/styles/email.css, which the layout
pulls in with <link rel="stylesheet" href="styles/email.css">, read from the local
file the way each inliner supports (never over the network). Compiled templates are
cached by the environments, as in any long-running app.

Protocol shared by every runner (see benches/compare/README.md): one round over the
corpus whose outputs are written to OUT/outputs.json, more untimed rounds for --warmup
seconds, then whole rounds until both --budget seconds and --min-messages are reached;
one JSON line on stdout.
"""

import argparse
import json
import logging
import sys
import time
from importlib import metadata
from pathlib import Path

from corpus import front_matter


def read_template(templates, name):
    """Template source with its front-matter removed (peers don't know about it)."""
    path = (templates / name).resolve()
    if templates.resolve() not in path.parents:
        raise FileNotFoundError(name)
    return front_matter(path.read_text(encoding="utf-8"))[1]


def subjects(templates, corpus):
    out = {}
    for entry in corpus:
        text = (templates / entry["file"]).read_text(encoding="utf-8")
        out[entry["file"]] = front_matter(text)[0]["subject"]
    return out


def jinja2_premailer(templates, corpus):
    import jinja2
    import premailer
    import requests

    class Loader(jinja2.BaseLoader):
        def get_source(self, environment, name):
            try:
                source = read_template(templates, name)
            except FileNotFoundError as e:
                raise jinja2.TemplateNotFound(name) from e
            return source, str(templates / name), lambda: True

    class NoNetwork(requests.Session):
        def get(self, url, *args, **kwargs):
            raise RuntimeError(f"refusing to fetch remote stylesheet {url}")

    html_env = jinja2.Environment(loader=Loader(), autoescape=True)
    text_env = jinja2.Environment(autoescape=False)
    subject_templates = {f: text_env.from_string(s) for f, s in subjects(templates, corpus).items()}

    def render(entry):
        data = entry["data"]
        subject = subject_templates[entry["file"]].render(data)
        html = html_env.get_template(entry["file"]).render(data)
        html = premailer.Premailer(
            html,
            base_path=str(templates),
            # premailer only looks at <link> elements when allow_network is on; the
            # session below refuses every remote fetch, so only local files are read.
            allow_network=True,
            session=NoNetwork(),
            allow_loading_external_files=True,
            # keep `!important` in the @media rules that stay in the head
            strip_important=False,
            disable_validation=True,
            cssutils_logging_level=logging.CRITICAL,
        ).transform()
        return subject, html

    versions = {"Jinja2": metadata.version("Jinja2"), "premailer": metadata.version("premailer")}
    return render, versions


def minijinja_envs(templates, corpus):
    """minijinja-py environments for the HTML bodies (autoescape) and the subjects."""
    import minijinja

    def loader(name):
        try:
            return read_template(templates, name)
        except FileNotFoundError:
            return None

    html_env = minijinja.Environment(loader=loader, auto_escape_callback=lambda name: True)
    text_env = minijinja.Environment(templates=subjects(templates, corpus))
    return html_env, text_env


def minijinja_css_inline(templates, corpus):
    import css_inline

    html_env, text_env = minijinja_envs(templates, corpus)
    inliner = css_inline.CSSInliner(
        base_url=templates.resolve().as_uri() + "/",
        keep_at_rules=True,
        cache=css_inline.StylesheetCache(size=8),
    )

    def render(entry):
        data = entry["data"]
        subject = text_env.render_template(entry["file"], **data)
        html = inliner.inline(html_env.render_template(entry["file"], **data))
        return subject, html

    versions = {"minijinja": metadata.version("minijinja"), "css_inline": metadata.version("css-inline")}
    return render, versions


def minijinja_render_only(templates, corpus):
    html_env, text_env = minijinja_envs(templates, corpus)

    def render(entry):
        data = entry["data"]
        return text_env.render_template(entry["file"], **data), html_env.render_template(entry["file"], **data)

    return render, {"minijinja": metadata.version("minijinja")}


PEERS = {
    "jinja2-premailer": jinja2_premailer,
    "minijinja-css-inline": minijinja_css_inline,
    "minijinja-render-only": minijinja_render_only,
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--peer", choices=sorted(PEERS), required=True)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--templates", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--min-messages", type=int, default=200)
    args = parser.parse_args()

    corpus = json.loads(args.corpus.read_text(encoding="utf-8"))
    render, versions = PEERS[args.peer](args.templates, corpus)
    versions["python"] = sys.version.split()[0]

    outputs = {}
    for entry in corpus:
        subject, html = render(entry)
        outputs[entry["id"]] = {"subject": subject, "html": html}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "outputs.json").write_text(json.dumps(outputs, ensure_ascii=False), encoding="utf-8")

    warmup_end = time.perf_counter() + args.warmup
    while time.perf_counter() < warmup_end:
        for entry in corpus:
            render(entry)

    messages = rounds = 0
    per_entry = {entry["id"]: 0.0 for entry in corpus}
    cpu_start = time.process_time()
    start = time.perf_counter()
    while True:
        for entry in corpus:
            one = time.perf_counter()
            render(entry)
            per_entry[entry["id"]] += time.perf_counter() - one
        messages += len(corpus)
        rounds += 1
        seconds = time.perf_counter() - start
        if seconds >= args.budget and messages >= args.min_messages:
            break
    print(
        json.dumps(
            {
                "peer": args.peer,
                "versions": versions,
                "messages": messages,
                "rounds": rounds,
                "seconds": seconds,
                "cpu_seconds": time.process_time() - cpu_start,
                "per_entry": per_entry,
            }
        )
    )


if __name__ == "__main__":
    main()
