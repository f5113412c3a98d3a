"""Builds the comparison corpus from the repository's own template set.

One entry per (sendable template file, schema example): every `*.html` under
templates/ that is not `_`-prefixed (layouts, partials) and has a `schema` in its
front-matter, with each entry of that schema's standard `examples` array. A locale
variant (`welcome.fr.html`) is its own entry, rendered by missive as
`template("welcome").locale("fr")` and by the peers from the file itself.

Usage: corpus.py TEMPLATES_DIR SCHEMAS_DIR OUT.json
"""

import json
import re
import sys
from pathlib import Path

import yaml

LOCALE = re.compile(r"^[a-z]{2,3}(-[A-Za-z]{2,4})?$")


def front_matter(text):
    """(front-matter dict, body) of a template file."""
    lines = text.split("\n")
    if not lines or lines[0].rstrip("\r") != "---":
        return {}, text
    for i in range(1, len(lines)):
        if lines[i].rstrip("\r") == "---":
            return yaml.safe_load("\n".join(lines[1:i])) or {}, "\n".join(lines[i + 1 :])
    raise ValueError("front-matter has no closing ---")


def main():
    templates, schemas, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    corpus = []
    for path in sorted(templates.rglob("*.html")):
        rel = path.relative_to(templates)
        if any(part.startswith("_") for part in rel.parts) or rel.parts[0] == "styles":
            continue
        meta, _ = front_matter(path.read_text(encoding="utf-8"))
        if not meta.get("schema"):
            continue
        stem = rel.with_suffix("").as_posix()
        name, locale = stem, None
        if "." in rel.name[: -len(".html")]:
            base, _, suffix = stem.rpartition(".")
            if LOCALE.match(suffix):
                name, locale = base, suffix
        schema = json.loads((schemas / meta["schema"]).read_text(encoding="utf-8"))
        for index, data in enumerate(schema.get("examples", [])):
            corpus.append(
                {
                    "id": f"{stem}#{index}",
                    "template": name,
                    "locale": locale,
                    "file": rel.as_posix(),
                    "example": index,
                    "bytes": len(json.dumps(data)),
                    "data": data,
                }
            )
    if not corpus:
        sys.exit(f"no template with schema examples under {templates}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(corpus, indent=1, ensure_ascii=False), encoding="utf-8")
    print(f"corpus: {len(corpus)} messages from {len({c['file'] for c in corpus})} templates -> {out}")


if __name__ == "__main__":
    main()
