#!/usr/bin/env python3
"""The one reporter of every scripted check: CI, the e2e suites, the
container and aarch64 checks (stdlib only).

One line per check, and a closing count alone on the last line:

    PASS  name
    FAIL  name
          detail, indented, its last 40 lines
    SKIP  name
    N passed, N failed[, N skipped]

A script whose checks run in several processes (a bash script calling
Python and node helpers) sets REPORT_TALLY to a file: every check of every
process is appended there, the helpers leave the closing line to it, and
`report.py summary` prints the count of all of them. From bash:

    report.py pass NAME | fail NAME [DETAIL] | skip NAME | info TEXT
    COMMAND | report.py collect    echo COMMAND's lines, tallying its checks
    report.py summary              the closing line; exit 1 if any failed
"""

import os
import sys

DETAIL_LINES = 40
WORDS = ("PASS", "FAIL", "SKIP")


class Report:
    def __init__(self):
        self.counts = dict.fromkeys(WORDS, 0)

    @property
    def failed(self):
        return self.counts["FAIL"]

    @property
    def passed(self):
        return self.counts["PASS"]

    def _line(self, word, name, detail=""):
        self.counts[word] += 1
        print(f"{word}  {name}")
        for line in str(detail).splitlines()[-DETAIL_LINES:]:
            print(f"      {line}")
        sys.stdout.flush()
        tally = os.environ.get("REPORT_TALLY")
        if tally:
            with open(tally, "a") as f:
                f.write(word + "\n")

    def ok(self, name):
        self._line("PASS", name)

    def fail(self, name, detail=""):
        self._line("FAIL", name, detail)

    def skip(self, name):
        self._line("SKIP", name)

    def check(self, name, cond, detail=""):
        """PASS if COND, else FAIL with DETAIL (a string, or a function
        called only on failure); returns bool(COND)."""
        if cond:
            self.ok(name)
        else:
            self.fail(name, detail() if callable(detail) else detail)
        return bool(cond)

    def verdict(self, name, problems):
        """PASS if PROBLEMS (a list of strings) is empty, else FAIL with them."""
        return self.check(name, not problems, "\n".join(map(str, problems)))

    @staticmethod
    def section(title):
        print(f"\n== {title}", flush=True)

    @staticmethod
    def info(text):
        print(f"      {text}", flush=True)

    def summary(self):
        return closing_line(self.counts)

    def finish(self):
        """The closing line, unless a parent's REPORT_TALLY collects it;
        the exit status: 1 if any check failed."""
        if not os.environ.get("REPORT_TALLY"):
            print(self.summary(), flush=True)
        return 1 if self.failed else 0


def closing_line(counts):
    s = f"{counts['PASS']} passed, {counts['FAIL']} failed"
    if counts["SKIP"]:
        s += f", {counts['SKIP']} skipped"
    return s


# The process's reporter: every helper module of one process reports here.
REPORT = Report()
check = REPORT.check


def main(argv):
    cmd, args = (argv[0], argv[1:]) if argv else ("", [])
    if cmd in ("pass", "fail", "skip") and args:
        getattr(REPORT, {"pass": "ok"}.get(cmd, cmd))(*args[:2 if cmd == "fail" else 1])
        return 0
    if cmd == "info" and args:
        REPORT.info(" ".join(args))
        return 0
    if cmd == "collect":
        for line in sys.stdin:
            word = line[:4]
            if word in WORDS and line[4:6] == "  ":
                # Only for helpers that are not Python: those tally their own.
                REPORT._line(word, line[6:].rstrip("\n"))
            else:
                print(line, end="", flush=True)
        return 0
    if cmd == "summary":
        counts = dict.fromkeys(WORDS, 0)
        tally = os.environ.get("REPORT_TALLY", "")
        if os.path.exists(tally):
            with open(tally) as f:
                for word in f.read().split():
                    counts[word] += 1
        print(closing_line(counts), flush=True)
        return 1 if counts["FAIL"] else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
