#!/usr/bin/env python3
"""Fails on a broken link, anchor or file reference in the project's text.

    python3 .ci/check_links.py              (from anywhere in the repository)
    python3 .ci/check_links.py --no-rust    (the same, but skip .rs files)

Three checks, over the files git tracks:

1. Links. Each inline Markdown link `[text](target)` that is not a URL must
   name a file or folder that exists, relative to the linking file, and its
   `#anchor`, if any, must be a heading of the target file (slugged as
   GitHub does) or an `<a id="…">` in it. Links inside code blocks and code
   spans are text, not links.
2. File references. A path that starts with one of the repository's
   top-level folders (`docs/behaviour.md`, `deploy/…`, `src/…`, `fakes/…`),
   in Markdown or in a .rs, .py, .sh, .yml or .yaml file (or a script with
   a shell shebang), must exist in the work tree; a path git ignores (a
   work directory such as tests/e2e/.work/) is not a repository file and is
   skipped. A bare upper-case Markdown name (`README.md`) must be a file the
   repository has, and a path into `shared/` is outside the repository. A
   path written right after another project's name and `'s ` (Element
   Call's docs/…) is that project's, not ours, and so is a `src/` path on a
   line that, or whose previous line, names a project in OTHER_PROJECTS
   (the fakes cite the homeserver source files they mirror).
3. The old contract. The text "SPEC" followed by "§", and the name of the
   old contract file, must not appear: the contract is docs/behaviour.md.

Reports one check per file (its links and paths counted; the broken ones
are the detail) through tests/e2e/lib/report.py; exits 1 if anything is wrong.
"""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e" / "lib"))
from report import REPORT  # noqa: E402
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"`[^`]*`")
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")
EXTERNAL = ("http://", "https://", "mailto:")
CODE_SUFFIXES = (".rs", ".py", ".sh", ".yml", ".yaml")
# Written in two parts so that this file does not flag itself.
OLD_CONTRACT = re.compile("SPEC" + r"(\s*§|\.md)")
# What starts a comment line: `//!`, `///`, `//`, `#`, `*`, with the spaces.
COMMENT_LEAD = re.compile(r"^\s*(//[/!]?|#|\*)?\s*")
SHARED = re.compile(r"(?<![\w./-])(?:\.\./)*shared/[\w./-]+")
BARE_MD = re.compile(r"(?<![\w./-])([A-Z][A-Z0-9_]+\.md)\b")
# Projects whose own source files our comments cite: a missing `src/` path
# next to one of these names is theirs.
OTHER_PROJECTS = re.compile(
    r"\b(Synapse|Twisted|Dendrite|Conduit|conduwuit|continuwuity|tuwunel|LiveKit|livekit"
    r"|lk-jwt-service|Element|MAS|axum|hyper|reqwest|bore|Traefik|cloudflared|Caddy)\b")


def tracked(*patterns):
    out = subprocess.run(
        ["git", "ls-files", "-z", "--", *patterns], cwd=ROOT, check=True, capture_output=True
    ).stdout.decode()
    return [ROOT / name for name in out.split("\0") if name]


def ignored(rel):
    """True if git ignores this path (it is made by a run, not tracked)."""
    return subprocess.run(["git", "check-ignore", "-q", "--no-index", rel], cwd=ROOT).returncode == 0


def prose_lines(path):
    """(line number, text) of the lines outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation but `-` and
    `_` dropped, spaces to hyphens."""
    text = CODE_SPAN.sub(lambda m: m.group(0).strip("`"), heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"<[^>]*>", "", text)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path, cache={}):
    if path not in cache:
        seen = {}
        found = set()
        for _, line in prose_lines(path):
            found.update(HTML_ANCHOR.findall(line))
            match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
            if not match:
                continue
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
        cache[path] = found
    return cache[path]


def check_links(path, passed, broken):
    for number, line in prose_lines(path):
        for target in LINK.findall(CODE_SPAN.sub("", line)):
            if target.startswith(EXTERNAL):
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(ROOT)}:{number}: {target}"
            if not linked.exists():
                broken.append(f"broken link: {where}: no such file")
            elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
                broken.append(f"broken link: {where}: no heading #{anchor} in {linked.relative_to(ROOT)}")
            else:
                passed[0] += 1


def reference_pattern():
    """A path that starts with a top-level folder of the repository, not
    inside another path or a URL."""
    tops = sorted({p.relative_to(ROOT).parts[0] for p in tracked() if len(p.relative_to(ROOT).parts) > 1}
                  | {".github"})
    names = "|".join(re.escape(t) for t in tops)
    return re.compile(rf"(?<![\w./$:~-])(?<!'s )((?:{names})/[\w./*-]*)")


def is_script(path):
    if path.suffix in CODE_SUFFIXES:
        return True
    if path.suffix or not path.is_file():
        return False
    with open(path, "rb") as fh:
        first = fh.readline()
    return first.startswith(b"#!") and b"sh" in first


def check_references(path, pattern, basenames, passed, broken):
    rel_file = path.relative_to(ROOT)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return
    previous = ""
    for number, line in enumerate(text.splitlines(), 1):
        near_other_project = bool(OTHER_PROJECTS.search(previous + " " + line))
        # A citation broken over two comment lines: "(SPEC" then "/// §3.1)".
        split_citation = (re.search(r"\b" + "SPEC" + r"$", previous.rstrip()) is not None
                          and COMMENT_LEAD.sub("", line).startswith("§"))
        previous = line
        where = f"{rel_file}:{number}"
        if OLD_CONTRACT.search(line) or split_citation:
            broken.append(f"old contract: {where}: cites the old contract; cite docs/behaviour.md §N")
        for ref in SHARED.findall(line):
            broken.append(f"missing file: {where}: {ref} is outside the repository")
        for name in BARE_MD.findall(line):
            if name in basenames:
                passed[0] += 1
            else:
                broken.append(f"missing file: {where}: {name} is not in the repository")
        for ref in pattern.findall(line):
            ref = ref.rstrip(".,:;")
            if not ref or ref.endswith("/.") or "..." in ref or "…" in ref:
                continue
            if any(ROOT.glob(ref)) if "*" in ref else (ROOT / ref).exists():
                passed[0] += 1
            elif ignored(ref) or (ref.startswith("src/") and near_other_project):
                continue
            else:
                broken.append(f"missing file: {where}: {ref}")


def main(argv):
    skip_rust = "--no-rust" in argv
    pattern = reference_pattern()
    files = tracked()
    markdown = set(tracked("*.md"))
    basenames = {p.name for p in files}
    for path in files:
        if skip_rust and path.suffix == ".rs":
            continue
        passed, broken = [0], []
        if path in markdown:
            check_links(path, passed, broken)
        if path.suffix == ".md" or is_script(path):
            check_references(path, pattern, basenames, passed, broken)
        if passed[0] or broken:
            REPORT.verdict(f"{path.relative_to(ROOT)}: links and paths ({passed[0] + len(broken)})", broken)
    return REPORT.finish()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
