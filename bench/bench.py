#!/usr/bin/env python3
"""Benchmark and soak test for matrix-turnify (docs/behaviour.md §11). See bench/README.md.

Run it through bench/run.sh (same arguments): bench (default), soak, aarch64,
livekit (the LiveKit front door against a real livekit-server; see tests/e2e/lib/lkclient.py).
Python 3.11 standard library only. Everything listens on 127.0.0.1 on
kernel-chosen ports; every process this script starts is stopped by PID on
exit (tests/e2e/lib/supervise.py). Logs and state stay in bench/.work.

This file checks the arguments and runs a mode: bench/wrk_modes.py (bench,
soak, aarch64) and bench/livekit_mode.py (livekit), over bench/common.py.
"""

import os
import re
import signal
import sys

sys.dont_write_bytecode = True  # no __pycache__ beside the modules
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, SUPERVISOR, WORK, Die, Report, build, ensure_tools, env, log, stop  # noqa: E402
from livekit_mode import LiveKitBench  # noqa: E402
from wrk_modes import FLIPPERS, aarch64_mode, bench_mode, soak_mode  # noqa: E402

USAGE = """\
usage: bash bench/run.sh [bench|soak|aarch64|livekit]
  bench (default)  scenarios (a)-(f) at 1 and 64 connections, then (g) if it can;
                   BENCH_SECONDS per run (default 10)
  soak             SOAK_SECONDS (default 60) at 64 connections of valid, invalid and
                   failing-upstream traffic; checks for unexpected answers and RSS growth
  aarch64          only scenario (g): the aarch64 binary under qemu-aarch64-static,
                   reuse path, 64 connections (emulated; build the binary first with
                   bash .ci/aarch64-checks.sh --build-only, or set AARCH64_BIN)
  livekit          the LiveKit front door against a real livekit-server v1.13.5: join
                   latency direct, on a reuse hit and on misses (LIVEKIT_JOINS joins each,
                   default 60), then the daemon's RSS with LIVEKIT_PARTICIPANTS (default
                   200) open signalling connections, with messages at the client's bound,
                   under the memory attack at the door's cap, and how long a silent
                   client stays
"""


def run(mode, bench_seconds, soak_seconds):
    report = Report()
    if mode == "livekit":
        LiveKitBench(report, env("LIVEKIT_JOINS", "60"), env("LIVEKIT_LATE_JOINS", "10"),
                     env("LIVEKIT_PARTICIPANTS", "200")).run()
    elif mode == "soak":
        soak_mode(report, soak_seconds)
    else:
        {"bench": bench_mode, "aarch64": aarch64_mode}[mode](report, bench_seconds)


# ------------------------------------------------------------------- main --

def main(argv):
    mode = argv[0] if argv and argv[0] else "bench"
    if mode in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0
    if mode not in ("bench", "soak", "aarch64", "livekit") or len(argv) > 1:
        sys.stderr.write(USAGE)
        return 2
    bench_seconds = env("BENCH_SECONDS", "10")
    soak_seconds = env("SOAK_SECONDS", "60")
    if not re.fullmatch(r"[1-9][0-9]*", bench_seconds):
        log("BENCH_SECONDS must be a positive integer")
        return 2
    if not (re.fullmatch(r"[1-9][0-9]*", soak_seconds) and int(soak_seconds) >= 15):
        log("SOAK_SECONDS must be an integer of at least 15 (5 s warm-up, then samples)")
        return 2
    for name, default in (("LIVEKIT_JOINS", "60"), ("LIVEKIT_LATE_JOINS", "10"), ("LIVEKIT_PARTICIPANTS", "200")):
        if not re.fullmatch(r"[1-9][0-9]*", env(name, default)):
            log(f"{name} must be a positive integer")
            return 2

    def on_term(signum, frame):
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, on_term)
    os.chdir(ROOT)
    try:
        os.makedirs(WORK, exist_ok=True)
        ensure_tools(mode)
        build()
        run(mode, bench_seconds, soak_seconds)
        return 0
    except Die as e:
        log(f"bench: {e}")
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for f in list(FLIPPERS):
            f.stop()
        stop(*SUPERVISOR.children)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
