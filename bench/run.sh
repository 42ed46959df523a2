#!/usr/bin/env bash
# Benchmark and soak test for matrix-turnify (docs/behaviour.md §11). See bench/README.md.
#
#   bash bench/run.sh            # scenarios (a)-(f) at 1 and 64 connections, then (g)
#   bash bench/run.sh soak       # 64 connections of mixed traffic, RSS over time
#   bash bench/run.sh aarch64    # only (g): the aarch64 binary under qemu (emulated)
#   bash bench/run.sh livekit    # the LiveKit front door against a real livekit-server
#   bash bench/run.sh --help
#
# Environment: BENCH_SECONDS (default 10) per wrk run, SOAK_SECONDS (default 60),
# AARCH64_BIN / AARCH64_CACHE_DIR (where scenario (g) finds the aarch64 binary),
# LIVEKIT_JOINS (default 60), LIVEKIT_LATE_JOINS (10), LIVEKIT_PARTICIPANTS (200).
# The work is done by bench/bench.py (Python 3 standard library only): it checks
# the arguments, installs wrk and nginx with apt-get if they are missing (not for
# livekit, which gets livekit-server from .ci/go_peers.py), builds,
# starts and measures everything on 127.0.0.1, and stops every process it started
# by PID on exit. Logs and state stay in bench/.work.
set -euo pipefail

command -v python3 >/dev/null || { echo "bench: python3 is required" >&2; exit 1; }
exec python3 "$(dirname "${BASH_SOURCE[0]}")/bench.py" "$@"
