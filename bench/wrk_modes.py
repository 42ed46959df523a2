"""bench/bench.py's wrk modes: bench (scenarios (a)-(g)), soak and aarch64.
See bench/README.md."""

import os
import shutil
import subprocess
import threading
import time

from common import (AARCH64_BIN, BENCH, CLK_TCK, TOKEN, TURN_PATH, WORK, FakeCloudflare, cpu_ticks, die, du_h,
                    fmt_ms, free_port, get, kib_to_mib, log, pass_fail, probe, start, start_daemon, start_nginx,
                    status_kib, stop, tail, tool_version, warm_up, wrk_line)
from e2e import fake_behaviour


class Table:
    """The rows of one wrk table: each scenario's run, as printed, and the
    figures the targets compare."""

    def __init__(self, seconds):
        self.bench_seconds = seconds
        self.rows = []
        self.results = {}  # "c64" -> dict(rps=, cpu=, hwm=, mints=), all as printed
        self.aarch64_note = ""

    def run_case(self, id, label, conns, url, pid, cf=None):
        """One wrk run against URL, measuring the process PID (and CF's mints)."""
        threads = 2 if conns > 1 else 1
        out = os.path.join(WORK, f"wrk-{id}-c{conns}.log")
        log(f"bench: ({id}) {label}, {conns} connection(s), {self.bench_seconds} s")
        m0 = cf.mints() if cf else 0
        t0 = cpu_ticks(pid)
        with open(out, "wb") as f:
            try:
                rc = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{self.bench_seconds}s", "--latency",
                                     "-s", os.path.join(BENCH, "report.lua"), "-H", f"Authorization: Bearer {TOKEN}", url],
                                    stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                    timeout=int(self.bench_seconds) + 60).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        if rc != 0:
            die(f"wrk failed; see {out}: {tail(out, 5)}")
        t1 = cpu_ticks(pid)
        m1 = cf.mints() if cf else 0
        hwm = status_kib(pid, "VmHWM")
        line = wrk_line(out, "BENCH")
        requests, duration = line["requests"], line["duration_us"]
        p50, p99 = line["p50_us"], line["p99_us"]
        errors = line["non2xx3xx"] + line["connect"] + line["read"] + line["write"] + line["timeout"]
        if requests <= 0:
            die(f"wrk completed no requests; see {out}")
        rps = f"{requests / (duration / 1e6):.0f}"
        cpu = f"{(t1 - t0) / CLK_TCK * 1e6 / requests:.1f}"
        mints = f"{(m1 - m0) * 1000 / requests:.2f}" if cf else "-"
        self.results[f"{id}{conns}"] = dict(rps=rps, cpu=cpu, hwm=hwm, mints=mints)
        self.rows.append(f"| ({id}) {label} | {conns} | {rps} | {fmt_ms(p50)} | {fmt_ms(p99)} | {errors} | {cpu} "
                         f"| {kib_to_mib(hwm)} | {mints} |")

    def run_daemon(self, id, label, daemon, url, cf):
        """Scenario ID against DAEMON at 1 and 64 connections, then stops it."""
        for conns in (1, 64):
            self.run_case(id, label, conns, url + TURN_PATH, daemon.pid, cf)
        stop(daemon)

    def aarch64_case(self, synapse_port):
        """Scenario (g): the aarch64 build on the reuse path, under qemu-aarch64-static.
        Emulated: its CPU figure is the qemu process's (translation included) and its
        RSS is qemu's plus the guest's, so it is no hardware figure; next to (c) it
        shows that the aarch64 build does nothing pathological. Needs the fake Synapse
        on SYNAPSE_PORT; starts and stops its own fake Cloudflare."""
        qemu = shutil.which("qemu-aarch64-static")
        if not qemu or not os.access(AARCH64_BIN, os.X_OK):
            self.aarch64_note = (f"(g) skipped: needs qemu-aarch64-static and {AARCH64_BIN} "
                                 "(bash .ci/aarch64-checks.sh --build-only builds it)")
            log(f"bench: {self.aarch64_note}")
            return
        cf = FakeCloudflare(0)
        daemon, url = start_daemon("aarch64-qemu", "true", synapse_port, cf, [qemu, AARCH64_BIN])
        warm_up(url + TURN_PATH, "aarch64 daemon under qemu (reuse)")
        self.run_case("g", "aarch64 binary under qemu-user, reuse path (EMULATED)", 64, url + TURN_PATH, daemon.pid, cf)
        stop(daemon)
        cf.stop()
        qemu_version = tool_version([qemu, "--version"])
        self.aarch64_note = (f"(g) is EMULATED: {AARCH64_BIN} ({os.path.getsize(AARCH64_BIN)} bytes) under "
                             f"{qemu_version} on this {os.uname().machine} machine. CPU is the qemu process's "
                             "(translation included), RSS qemu's plus the guest's: not a hardware figure.")

    @staticmethod
    def results_header():
        return ["| scenario | connections | requests/s | p50 | p99 | errors | CPU µs / request | peak RSS MiB "
                "| CF mints / 1,000 requests |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def targets(self):
        r = self.results

        def ratio(num, den):
            # Of the figures as printed, like the table (so the line can be checked by hand).
            return f"{float(num) / float(den):.2f}" if float(den) > 0 else "inf"

        lines = []
        for c in (1, 64):
            cpu_c, cpu_b = r[f"c{c}"]["cpu"], r[f"b{c}"]["cpu"]
            q = ratio(cpu_c, cpu_b)
            lines.append(pass_fail(q != "inf" and float(q) <= 2, f"reuse path CPU/request ÷ nginx hop CPU/request at "
                                   f"{c} connection(s) = {cpu_c} ÷ {cpu_b} = {q}× (≤ 2×)"))
        for c in (1, 64):
            cpu_f, cpu_c = r[f"f{c}"]["cpu"], r[f"c{c}"]["cpu"]
            lines.append(f"- whoami path at {c} connection(s): {cpu_f} CPU µs/request, "
                         f"{ratio(cpu_f, cpu_c)}× the plain reuse path ({cpu_c})")
        for c in (1, 64):
            cpu_h, cpu_c = r[f"h{c}"]["cpu"], r[f"c{c}"]["cpu"]
            lines.append(f"- budgets on at {c} connection(s): {cpu_h} CPU µs/request, "
                         f"{ratio(cpu_h, cpu_c)}× the plain reuse path ({cpu_c})")
        max_hwm = max([0] + [r[k]["hwm"] for k in ("c1", "c64", "d1", "d64", "e1", "e64", "f1", "f64", "h1", "h64")])
        lines.append(pass_fail(max_hwm < 20 * 1024, f"daemon peak RSS {kib_to_mib(max_hwm)} MiB (< 20 MiB)"))
        rps = r["e64"]["rps"]
        lines.append(pass_fail(int(rps) >= 400, f"(e) CF latency 150 ms at 64 connections: {rps} requests/s (≥ 400)"))
        for c in (1, 64):
            m = r[f"c{c}"]["mints"]
            lines.append(pass_fail(float(m) <= 1, f"reuse path at {c} connection(s): {m} Cloudflare mints per "
                                   "1,000 requests (≤ 1)"))
        return lines


def aarch64_mode(report, seconds):
    """Only scenario (g)."""
    table = Table(seconds)
    synapse_port = free_port()
    nginx, _ = start_nginx("synapse", synapse_port)
    probe(f"http://127.0.0.1:{synapse_port}{TURN_PATH}", "fake Synapse")
    table.aarch64_case(synapse_port)
    if not table.rows:
        die(table.aarch64_note)
    stop(nginx)
    report.emit([
        "# matrix-turnify benchmark, scenario (g) only",
        "",
        f"Command: `BENCH_SECONDS={seconds} bash bench/run.sh aarch64`",
        "",
        *report.machine_info(),
        *table.results_header(),
        *table.rows,
        "",
        table.aarch64_note,
        "",
        report.footer(),
    ], "results-aarch64.md")


def wait_for_reading(url):
    """Until the daemon at URL has read the usage: a budget withholds before."""
    deadline = time.monotonic() + 10
    while "turnify_usage_reading_stale 0" not in get(f"{url}/metrics", TOKEN)[1]:
        if time.monotonic() > deadline:
            die(f"the daemon at {url} read no usage within 10 s")
        time.sleep(0.05)


def bench_mode(report, seconds):
    """Scenarios (a)-(f) at 1 and 64 connections, then (g) if it can."""
    table = Table(seconds)
    synapse_port = free_port()
    _, fake_worker = start_nginx("synapse", synapse_port)
    proxy_port = free_port()
    _, proxy_worker = start_nginx("proxy", proxy_port, synapse_port)
    synapse = f"http://127.0.0.1:{synapse_port}{TURN_PATH}"
    proxy = f"http://127.0.0.1:{proxy_port}{TURN_PATH}"
    probe(synapse, "fake Synapse")
    probe(proxy, "nginx proxy hop")

    for c in (1, 64):
        table.run_case("a", "fake Synapse direct (ceiling)", c, synapse, fake_worker)
    for c in (1, 64):
        table.run_case("b", "nginx proxy hop (reference)", c, proxy, proxy_worker)

    cf = FakeCloudflare(0)
    daemon, url = start_daemon("reuse", "true", synapse_port, cf)
    warm_up(url + TURN_PATH, "daemon (reuse)")
    table.run_daemon("c", "daemon, reuse path", daemon, url, cf)

    # The reuse path with both budgets on and a reading in memory: what the
    # budget check costs a request (docs/behaviour.md §13).
    daemon, url = start_daemon("reuse-budgets", "true", synapse_port, cf, extra={
        "CF_ACCOUNT_ID": "test-account-id",
        "CF_ANALYTICS_API_TOKEN": "test-analytics-token",
        "CF_ANALYTICS_API_URL": f"{cf.origin}/client/v4/graphql",
        "CF_CUSTOM_IDENTIFIER": "user_id",
        "TURN_MONTHLY_EGRESS_BUDGET_GB": "1000000",
        "TURN_USER_MONTHLY_EGRESS_BUDGET_GB": "1000",
    })
    wait_for_reading(url)
    warm_up(url + TURN_PATH, "daemon (reuse, budgets on)")
    table.run_daemon("h", "daemon, reuse path, both budgets on", daemon, url, cf)

    # The MSC4166 path: every request is a turnServer 404 plus a whoami.
    msc4166_port = free_port()
    start_nginx("msc4166", msc4166_port)
    daemon, url = start_daemon("reuse-whoami", "true", msc4166_port, cf)
    warm_up(url + TURN_PATH, "daemon (reuse, whoami path)", "the warm-up answer through whoami")
    table.run_daemon("f", "daemon, reuse path through 404 + whoami", daemon, url, cf)

    daemon, url = start_daemon("mint", "false", synapse_port, cf)
    probe(url + TURN_PATH, "daemon (mint)")
    table.run_daemon("d", "daemon, mint every request", daemon, url, cf)
    cf.stop()

    cf = FakeCloudflare(150)
    daemon, url = start_daemon("mint-150ms", "false", synapse_port, cf)
    probe(url + TURN_PATH, "daemon (mint, CF +150 ms)")
    table.run_daemon("e", "daemon, mint, CF latency 150 ms", daemon, url, cf)
    cf.stop()

    table.aarch64_case(synapse_port)

    wrk_cmd = (f"wrk -t1 -c1 | -t2 -c64 -d{seconds}s --latency -s bench/report.lua "
               f"-H 'Authorization: Bearer {TOKEN}' http://127.0.0.1:PORT{TURN_PATH}")
    report.emit([
        "# matrix-turnify benchmark",
        "",
        f"Command: `BENCH_SECONDS={seconds} bash bench/run.sh`",
        "",
        f"Each row: `{wrk_cmd}`",
        "",
        *report.machine_info(),
        "## Results",
        "",
        *table.results_header(),
        *table.rows,
        "",
        "CPU and RSS are of the process under test: (a) the fake Synapse's nginx worker, (b) the proxy's",
        "nginx worker, (c)-(f) the daemon (a fresh one per scenario; RSS is VmHWM, peak since start).",
        "(f) asks the homeserver twice per request (turnServer, then /account/whoami: docs/behaviour.md §3.1).",
        table.aarch64_note,
        "Errors are wrk's non-2xx/3xx answers plus socket errors.",
        "",
        "## Targets (docs/behaviour.md §11)",
        "",
        *table.targets(),
        "",
        report.footer(),
    ], "results.md")


def soak_mode(report, seconds):
    """Mixed traffic against a daemon whose Cloudflare flips between healthy and failing."""
    seconds = int(seconds)
    synapse_port = free_port()
    start_nginx("synapse-soak", synapse_port)
    cf = FakeCloudflare(0)
    daemon, url = start_daemon("soak", "false", synapse_port, cf)
    daemon_log = os.path.join(WORK, "daemon-soak.log")
    warm_up(url + TURN_PATH, "daemon (soak, valid token)", "the valid-token probe")
    code, _ = get(url + TURN_PATH, "syt_not_a_valid_token")
    if code != "401":
        die(f"an invalid token should get 401 from the daemon, got '{code}'")
    m0 = cf.mints()

    flipper = Flipper(cf, os.path.join(WORK, "flipper.log"))
    out = os.path.join(WORK, "wrk-soak.log")
    log(f"bench: soak, 64 connections, {seconds} s")
    t0 = time.monotonic()
    wrk = start("wrk", ["wrk", "-t2", "-c64", f"-d{seconds}s", "--timeout", "2s", "--latency",
                "-s", os.path.join(BENCH, "soak.lua"), url + TURN_PATH], out)

    # The sampling points of the soak (timing, not readiness waits).
    def sample_at(offset):
        time.sleep(max(0.0, t0 + offset - time.monotonic()))
        return status_kib(daemon.pid, "VmRSS"), f"{time.monotonic() - t0:.1f}"

    rss_start, at_start = sample_at(5)
    rss_mid, at_mid = sample_at(seconds / 2)
    rss_end, at_end = sample_at(seconds - 1)

    try:
        wrk_rc = wrk.wait(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        wrk_rc = "timeout"
    stop(wrk)
    flipper.stop()
    if wrk_rc != 0:
        die(f"wrk failed ({wrk_rc}); see {out}: {tail(out, 5)}")
    if daemon.poll() is not None:
        die("the daemon died during the soak; see bench/.work/daemon-soak.log")
    rss_after = status_kib(daemon.pid, "VmRSS")
    hwm = status_kib(daemon.pid, "VmHWM")
    m1 = cf.mints()
    line = wrk_line(out, "SOAK")

    requests, unexpected = line["requests"], line["unexpected"]
    socket_errors = line["connect"] + line["read"] + line["write"] + line["timeout"]
    rps = f"{requests / (line['duration_us'] / 1e6):.0f}"
    growth = f"{(rss_end - rss_start) * 100 / rss_start:.1f}"
    with open(daemon_log, "rb") as f:
        log_lines = f.read().count(b"\n")
    threads = len(os.listdir(f"/proc/{daemon.pid}/task"))

    report.emit([
        "# matrix-turnify soak",
        "",
        f"Command: `SOAK_SECONDS={seconds} bash bench/run.sh soak`",
        "",
        f"Load: `wrk -t2 -c64 -d{seconds}s --timeout 2s --latency -s bench/soak.lua http://127.0.0.1:PORT{TURN_PATH}`,",
        "rotating valid token (v3 path), invalid token, valid token (r0 path); the daemon runs with",
        "CREDENTIAL_REUSE=false and the fake Cloudflare flips between healthy and 503 every 5 s.",
        "",
        *report.machine_info(),
        "## Results",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| requests served | {requests} |",
        f"| requests/s | {rps} |",
        f"| p50 / p99 | {fmt_ms(line['p50_us'])} / {fmt_ms(line['p99_us'])} |",
        f"| sent with a valid / an invalid token | {line['sent_valid']} / {line['sent_invalid']} |",
        f"| 200 with Cloudflare credentials | {line['ok_credentials']} |",
        f"| 200 fallback (Synapse's `{{}}`) | {line['ok_fallback']} |",
        f"| 401 | {line['unauthorized']} |",
        f"| 5xx | {line['status_5xx']} |",
        f"| other statuses | {line['status_other']} |",
        f"| socket errors (connect/read/write/timeout) | {socket_errors} "
        f"({line['connect']}/{line['read']}/{line['write']}/{line['timeout']}) |",
        f"| answers of the wrong class | {line['misattributed']} |",
        f"| **unexpected** | **{unexpected}** |",
        f"| Cloudflare mints during the soak | {m1 - m0} |",
        f"| fake Cloudflare flips | {flipper.flips()} |",
        f"| daemon VmRSS after 5 s warm-up (t = {at_start} s) | {kib_to_mib(rss_start)} MiB |",
        f"| daemon VmRSS at middle (t = {at_mid} s) | {kib_to_mib(rss_mid)} MiB |",
        f"| daemon VmRSS at end (t = {at_end} s, wrk still running) | {kib_to_mib(rss_end)} MiB |",
        f"| daemon VmRSS after the load | {kib_to_mib(rss_after)} MiB |",
        f"| daemon peak RSS (VmHWM) | {kib_to_mib(hwm)} MiB |",
        f"| daemon log (LOG_LEVEL=warn) | {log_lines} lines, {du_h(daemon_log)} |",
        f"| daemon threads at end | {threads} |",
        f"| RSS growth, warm-up → end | {growth} % |",
        "",
        "## Targets",
        "",
        pass_fail(unexpected == 0, f"unexpected answers: {unexpected} (must be 0)"),
        pass_fail(float(growth) < 10, f"RSS growth from after warm-up to end: {growth} % (< 10 %)"),
        pass_fail(hwm < 20 * 1024, f"daemon peak RSS {kib_to_mib(hwm)} MiB (< 20 MiB)"),
        "",
        report.footer(),
    ], "soak-results.md")


class Flipper:
    """Flips the fake Cloudflare between healthy (as it starts) and failing (503)
    every 5 s, logging each flip. The daemon's back-off (docs/behaviour.md §5: 30 s after 3
    failures) means it may skip Cloudflare through several healthy windows; that
    is expected."""

    def __init__(self, cf, path):
        self.cf, self.path = cf, path
        self.stopping = threading.Event()
        self.log = open(path, "w")
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        FLIPPERS.append(self)

    def run(self):
        steps = [({"fail_status": 503}, "fail_status 503", "flip to fail failed"),
                 ({"ok": True, "latency_ms": 0}, "ok", "flip to ok failed")]
        i = 0
        while not self.stopping.wait(5):
            body, done, failed = steps[i % 2]
            try:
                fake_behaviour(self.cf.origin, body, timeout=5)
                ok = True
            except (OSError, RuntimeError):
                ok = False
            print(f"{time.strftime('%H:%M:%S')} {done if ok else failed}", file=self.log, flush=True)
            i += 1

    def stop(self):
        self.stopping.set()
        self.thread.join(timeout=10)
        self.log.close()
        if self in FLIPPERS:
            FLIPPERS.remove(self)

    def flips(self):
        with open(self.path) as f:
            return sum(1 for line in f if line.strip())


FLIPPERS = []
