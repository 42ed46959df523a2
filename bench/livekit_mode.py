"""bench/bench.py's livekit mode: the LiveKit front door against a real
livekit-server v1.13.5 (see tests/e2e/lib/lkclient.py). See bench/README.md."""

import math
import os
import queue
import re
import selectors
import statistics
import sys
import threading
import time

from common import (DAEMON_BIN, READY_S, ROOT, START_EPOCH, WORK, Die, FakeCloudflare, die, free_ports, git,
                    kib_to_mib, log, pass_fail, ready_url, start, status_kib, stop, tool_version)
import install  # tests/e2e/lib, on the path common.py sets
import lkclient
from supervise import WaitError, wait_http

LK_KEY = "benchkey"
LK_SECRET = "bench-livekit-secret-0123456789abcdef"  # livekit-server wants 32 characters or more
# What a through-daemon join must carry: the fake Cloudflare's TURN host.
CF_TURN_HOST = "turn.cloudflare.com"

LIVEKIT_YAML = """\
# livekit-server for bench/run.sh livekit: loopback only, one UDP mux port,
# its own TURN off, one API key.
port: {port}
bind_addresses: ["127.0.0.1"]
rtc:
  tcp_port: {tcp_port}
  udp_port: {udp_port}
  use_external_ip: false
  node_ip: 127.0.0.1
  enable_loopback_candidate: true
  interfaces:
    includes: [lo]
  ips:
    includes: [127.0.0.1/32]
turn:
  enabled: false
keys:
  {key}: {secret}
logging:
  level: warn
"""


def livekit_bin():
    """The livekit-server binary .ci/go_peers.py builds (and caches outside the clone)."""
    rc, bindir, err = install.go_peer("livekit")
    if rc != 0:
        die(f"python3 .ci/go_peers.py livekit failed ({rc}): {err[-500:]}")
    path = os.path.join(bindir, "livekit-server")
    if not os.access(path, os.X_OK):
        die(f"no livekit-server at {path}")
    return path


class LiveKit:
    def __init__(self, binary):
        d = os.path.join(WORK, "livekit")
        os.makedirs(d, exist_ok=True)
        self.port, tcp_port, udp_port = free_ports(3)
        conf = os.path.join(d, "livekit.yaml")
        with open(conf, "w") as f:
            f.write(LIVEKIT_YAML.format(port=self.port, tcp_port=tcp_port, udp_port=udp_port,
                                        key=LK_KEY, secret=LK_SECRET))
        self.proc = start("livekit-server", [binary, "--config", conf], os.path.join(d, "livekit.log"),
                          ready=ready_url(f"http://127.0.0.1:{self.port}/"))

    def stop(self):
        stop(self.proc)


class FrontDoor:
    """The daemon with its LiveKit front door before LIVEKIT_PORT (reuse on; with
    LIVEKIT_KEY and LIVEKIT_SECRET when VERIFY). No homeserver is asked on this
    path: SYNAPSE_BASE_URL names a port nobody listens on."""

    def __init__(self, name, cf, livekit_port, verify, log_level="warn"):
        port, self.port, nobody = free_ports(3)
        environ = {
            "PATH": os.environ.get("PATH", ""),
            "LISTEN_ADDR": f"127.0.0.1:{port}",
            "SYNAPSE_BASE_URL": f"http://127.0.0.1:{nobody}",
            "CF_TURN_KEY_ID": "bench-key",
            "CF_TURN_API_TOKEN": "bench-token",
            "CF_TURN_API_BASE_URL": cf.base,
            "LOG_LEVEL": log_level,
            "CREDENTIAL_REUSE": "true",
            "LIVEKIT_SFU_URL": f"http://127.0.0.1:{livekit_port}",
            "LIVEKIT_LISTEN_ADDR": f"127.0.0.1:{self.port}",
        }
        if verify:
            environ |= {"LIVEKIT_KEY": LK_KEY, "LIVEKIT_SECRET": LK_SECRET}
        self.log = os.path.join(WORK, f"daemon-{name}.log")
        self.url = f"http://127.0.0.1:{port}"
        self.proc = start(f"matrix-turnify ({name})", [DAEMON_BIN], self.log, environ=environ,
                          ready=ready_url(f"{self.url}/healthz"))
        self.pid = self.proc.pid
        # LiveKit's own "/" answers 200 OK, through the front door as a plain request.
        try:
            wait_http(f"http://127.0.0.1:{self.port}/", timeout=READY_S, pid=self.pid, poll=0.05)
        except WaitError as e:
            die(f"matrix-turnify's front door ({name}): {e}")

    def signalling(self):
        """From /metrics: (connections open, {turn outcome: connections ended})."""
        try:
            ended, open_now = lkclient.counters(self.url)
        except (OSError, RuntimeError) as e:
            die(str(e))
        return open_now, ended

    def ended(self, timeout=10):
        """The outcome counters once every relayed connection has ended (the
        daemon counts one when both legs are done, up to CLOSE_LINGER after a
        close), waiting at most TIMEOUT seconds for that."""
        deadline = time.monotonic() + timeout
        while True:
            open_now, ended = self.signalling()
            if open_now == 0 or time.monotonic() >= deadline:
                return open_now, ended
            time.sleep(0.05)

    def stop(self):
        stop(self.proc)


def livekit_const(name):
    """A byte count src/livekit/proxy.rs sets (a product of integers): MAX_CLIENT_MESSAGE_BYTES, RELAY_BUDGET_BYTES."""
    with open(os.path.join(ROOT, "src", "livekit", "proxy.rs")) as f:
        m = re.search(rf"pub const {name}: usize = ([0-9_ *]+);", f.read())
    if not m:
        die(f"no {name} in src/livekit/proxy.rs")
    return math.prod(int(x.replace("_", "")) for x in m[1].split("*"))


def log_field(path, message, field):
    """FIELD of the daemon's first text log line holding MESSAGE (LOG_FORMAT=text)."""
    with open(path, errors="replace") as f:
        for line in f:
            if message in line and (m := re.search(rf"\b{field}=(\S+)", line)):
                return m[1].strip('"')
    die(f"no {message!r} line with {field} in {path}")


def client_frame_head(length):
    """A masked binary frame's head for LENGTH bytes, as a client sends it (mask 0: payload as is)."""
    return bytes([0x82, 0x80 | 127]) + length.to_bytes(8, "big") + bytes(4)


def has_cloudflare(servers):
    return any(CF_TURN_HOST in url for urls in servers for url in urls)


def on_threads(work, items, threads=8):
    """Runs WORK on THREADS threads at once, each given every THREADS-th of
    ITEMS, and waits for all of them."""
    workers = [threading.Thread(target=work, args=(items[w::threads],)) for w in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def lk_join(port, identity, room, timeout=15):
    """One join through PORT as IDENTITY: (conn, seconds to the join, Cloudflare entry?)."""
    tok = lkclient.token(LK_KEY, LK_SECRET, identity, room)
    try:
        conn, secs, servers = lkclient.join("127.0.0.1", port, tok, timeout=timeout)
    except (OSError, TimeoutError, lkclient.ProtocolError) as e:
        die(f"join of {identity} to {room} on port {port} failed: {e}")
    return conn, secs, has_cloudflare(servers)


def socket_fds(pid):
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return n


def nearest_rank(sorted_values, q):
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


class Keeper:
    """Keeps signalling connections alive the way livekit-client does: a
    SignalRequest ping_req as each arrives and every PING_INTERVAL seconds
    after (JoinResponse.ping_interval is 5 s in livekit-server v1.13.5), WebSocket
    pings answered, and everything LiveKit sends read (participant updates), so
    neither leg backs up. One thread, one selector; a connection handed to `add`
    belongs to it until `stop`."""

    PING_INTERVAL = 5

    def __init__(self):
        self.sel = selectors.DefaultSelector()
        self.incoming = queue.Queue()
        self.conns = []
        self.stopping = threading.Event()
        self.errors = []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def add(self, conn):
        self.incoming.put(conn)

    def ping(self, conn):
        try:
            conn.send_binary(lkclient.ping_request())
            conn.pings += 1
        except OSError as e:
            conn.dead = True
            self.errors.append(f"ping: {e}")

    def run(self):
        next_round = time.monotonic() + self.PING_INTERVAL
        while not self.stopping.is_set():
            while not self.incoming.empty():
                conn = self.incoming.get()
                conn.pings = conn.pongs = 0
                conn.dead = False
                conn.sock.setblocking(False)
                self.sel.register(conn.sock, selectors.EVENT_READ, conn)
                self.conns.append(conn)
                self.ping(conn)
            wait = max(0.0, min(0.1, next_round - time.monotonic()))
            for key, _ in self.sel.select(wait):
                conn = key.data
                try:
                    data = conn.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError as e:
                    data = b""
                    self.errors.append(f"recv: {e}")
                if not data:
                    conn.dead = True
                    self.sel.unregister(conn.sock)
                    continue
                conn.buf += data
                try:
                    while (m := conn.message()) is not None:
                        opcode, payload = m
                        if opcode == lkclient.OP_CLOSE:
                            conn.dead = True
                        elif opcode == lkclient.OP_BINARY and lkclient.is_pong(payload):
                            conn.pongs += 1
                except (lkclient.ProtocolError, OSError) as e:
                    conn.dead = True
                    self.errors.append(f"frame: {e}")
            if time.monotonic() >= next_round:
                next_round += self.PING_INTERVAL
                for conn in self.conns:
                    if not conn.dead:
                        self.ping(conn)

    def alive_and_answered(self, pongs):
        """How many connections are open and have answered at least PONGS pings."""
        return sum(1 for c in list(self.conns) if not c.dead and c.pongs >= pongs)

    def stop(self):
        """Stops the thread and gives the connections back, blocking again."""
        self.stopping.set()
        self.thread.join(timeout=10)
        for conn in self.conns:
            try:
                self.sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
            conn.sock.setblocking(True)
        self.sel.close()
        return self.conns


class LiveKitBench:
    """The livekit mode: join latency in groups of cases, the memory run (with
    the client's message bound, the memory attack and a silent client), and
    its report."""

    def __init__(self, report, joins, late_joins, participants):
        self.report = report
        self.lk_rows = []
        self.lk_joins, self.lk_late_joins, self.lk_participants = joins, late_joins, participants

    def join_rows(self, cases, joins):
        """Rows of the join table for CASES, each a dict: label, port (LiveKit's
        or a front door's), identity (a function of the join's number: 0 is the
        warm-up, not counted), room (a function of the identity), and for a
        front door its cf and door, one each per case. The cases take turns,
        one join each per round, in an order rotated every round, so that
        whatever else runs on the machine weighs on all alike; each join is
        left cleanly before the next."""
        log(f"bench: livekit: {joins} joins each, in turns: " + "; ".join(c["label"] for c in cases))
        for c in cases:
            conn, _, _ = lk_join(c["port"], c["identity"](0), c["room"](c["identity"](0)))
            conn.leave(time.monotonic() + 5)
            c["mints0"] = c["cf"].mints() if c.get("cf") else 0
            c["ended0"] = c["door"].ended()[1] if c.get("door") else {}
            c["times"], c["carried"] = [], 0
        for i in range(1, joins + 1):
            turn = (i - 1) % len(cases)
            for c in cases[turn:] + cases[:turn]:
                identity = c["identity"](i)
                conn, secs, cloudflare = lk_join(c["port"], identity, c["room"](identity))
                conn.leave(time.monotonic() + 5)
                c["times"].append(secs * 1000)
                c["carried"] += cloudflare
        for c in cases:
            outcomes, mints = "-", None
            if c.get("door"):
                still_open, ended = c["door"].ended()
                counts = {k: v - c["ended0"].get(k, 0) for k, v in sorted(ended.items()) if v > c["ended0"].get(k, 0)}
                outcomes = ", ".join(f"{k} {v}" for k, v in counts.items())
                outcomes += f" ({still_open} still open)" if still_open else ""
                mints = c["cf"].mints() - c["mints0"]
            times = sorted(c["times"])
            self.lk_rows.append(dict(label=c["label"], n=len(times), median=statistics.median(times),
                                     p90=nearest_rank(times, 0.9), min=times[0], max=times[-1],
                                     carried=c["carried"], mints=mints, outcomes=outcomes))

    @staticmethod
    def join_table(rows):
        out = ["| case | n | median | p90 | min | max | joins carrying the Cloudflare entry "
               "| daemon's `turn` outcomes | CF mints |",
               "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
        for r in rows:
            carried = "-" if r["mints"] is None else f"{r['carried']}/{r['n']} ({r['carried'] * 100 / r['n']:.0f} %)"
            mints = "-" if r["mints"] is None else str(r["mints"])
            out.append(f"| {r['label']} | {r['n']} | {r['median']:.1f} ms | {r['p90']:.1f} ms "
                       f"| {r['min']:.1f} ms | {r['max']:.1f} ms | {carried} | {r['outcomes']} | {mints} |")
        return out

    def memory(self, lk, cf, participants, rooms):
        """The daemon's RSS idle, then with PARTICIPANTS open signalling connections
        (ROOMS rooms), kept alive with pings; LiveKit's next to it."""
        door = FrontDoor("lk-memory", cf, lk.port, verify=False, log_level="info")
        pid = door.pid
        m = {"idle_rss": status_kib(pid, "VmRSS"), "idle_hwm": status_kib(pid, "VmHWM"),
             "idle_sockets": socket_fds(pid), "lk_idle_rss": status_kib(lk.proc.pid, "VmRSS")}
        log(f"bench: livekit: {participants} signalling connections through the daemon, {rooms} rooms")
        keeper = Keeper()
        carried = []
        lock = threading.Lock()
        failures = []

        def joiner(indices):
            for i in indices:
                try:
                    conn, _, cloudflare = lk_join(door.port, f"member-{i:04d}", f"bench-memory-{i % rooms:02d}")
                except Die as e:
                    with lock:
                        failures.append(str(e))
                    return
                with lock:
                    carried.append(cloudflare)
                keeper.add(conn)

        t0 = time.monotonic()
        on_threads(joiner, range(participants))
        m["join_seconds"] = time.monotonic() - t0
        if failures:
            keeper.stop()
            die(f"{len(failures)} of {participants} joins failed; first: {failures[0]}")
        # Measured once every connection is open and has answered a ping
        # through the daemon (bounded: three ping rounds).
        deadline = time.monotonic() + 3 * Keeper.PING_INTERVAL
        while keeper.alive_and_answered(1) < participants and time.monotonic() < deadline:
            time.sleep(0.05)
        m["answered"] = keeper.alive_and_answered(1)
        m["at"] = time.monotonic() - t0
        m["rss"] = status_kib(pid, "VmRSS")
        m["hwm"] = status_kib(pid, "VmHWM")
        m["sockets"] = socket_fds(pid)
        m["relayed"] = door.signalling()[0]
        m["threads"] = len(os.listdir(f"/proc/{pid}/task"))
        m["lk_rss"] = status_kib(lk.proc.pid, "VmRSS")
        m["lk_hwm"] = status_kib(lk.proc.pid, "VmHWM")
        # Once more two ping rounds later (a sampling point, as in soak mode):
        # still open, still the same size.
        time.sleep(2 * Keeper.PING_INTERVAL)
        m["answered2"] = keeper.alive_and_answered(2)
        m["at2"] = time.monotonic() - t0
        m["rss2"] = status_kib(pid, "VmRSS")
        conns = keeper.stop()
        m["keeper_errors"] = keeper.errors
        m["pings"] = sum(c.pings for c in conns)
        m["pongs"] = sum(c.pongs for c in conns)
        m["carried"] = sum(carried)

        def leaver(part):
            for conn in part:
                conn.leave(time.monotonic() + 5)

        on_threads(leaver, conns)
        m["after_open"], _ = door.ended()
        m["after_sockets"] = socket_fds(pid)
        m["after_rss"] = status_kib(pid, "VmRSS")

        # The client's message bound: one connection, two messages of exactly
        # MAX_CLIENT_MESSAGE_BYTES, each followed by a ping whose pong shows
        # LiveKit has had the whole message through the daemon.
        m["max_bytes"] = livekit_const("MAX_CLIENT_MESSAGE_BYTES")
        conn, _, _ = lk_join(door.port, f"large-{START_EPOCH:x}", f"bench-large-{START_EPOCH:x}")
        m["large_before"] = status_kib(pid, "VmRSS")
        large = lkclient.filler_request(m["max_bytes"])
        for k in (1, 2):
            conn.send_binary(large)
            conn.send_binary(lkclient.ping_request())
            deadline = time.monotonic() + 30
            try:
                while True:
                    opcode, payload = conn.next_message(deadline)
                    if opcode == lkclient.OP_BINARY and lkclient.is_pong(payload):
                        break
            except (OSError, TimeoutError, lkclient.ProtocolError) as e:
                die(f"no pong after a {m['max_bytes']}-byte message: {e}")
            m[f"large_{k}"] = status_kib(pid, "VmRSS")
        conn.leave(time.monotonic() + 5)
        door.ended()
        m["large_after"] = status_kib(pid, "VmRSS")
        self.attack(door, m)
        self.silent(door, m)
        door.stop()
        return m

    def attack(self, door, m):
        """The memory attack: as many signalling connections as the door's cap
        allows, each joined with a valid token, then sending the start of a
        message declared at MAX_CLIENT_MESSAGE_BYTES and holding it there: its
        FREE_MESSAGE_BYTES and an even share of RELAY_BUDGET_BYTES, the most
        they can hold together. Measured: the daemon's RSS and peak while they
        hold, how many it ended for the relay budget, RSS once they are gone."""
        pid = door.pid
        cap = int(log_field(door.log, "connection caps", "livekit_max_connections"))
        m["attack_cap"] = cap
        m["budget"] = livekit_const("RELAY_BUDGET_BYTES")
        m["attack_hold"] = livekit_const("FREE_MESSAGE_BYTES") + m["budget"] // cap
        m["attack_before"] = status_kib(pid, "VmRSS")
        log(f"bench: livekit: memory attack, {cap} connections each holding {m['attack_hold']} bytes of a message")
        held, lock, failures = [], threading.Lock(), []
        head = client_frame_head(m["max_bytes"])
        body = bytes(m["attack_hold"])

        def attacker(indices):
            for i in indices:
                try:
                    conn, _, _ = lk_join(door.port, f"attacker-{START_EPOCH:x}-{i:04d}",
                                         f"bench-attack-{START_EPOCH:x}-{i % 100:02d}")
                    conn.sock.sendall(head + body)
                except (Die, OSError) as e:
                    with lock:
                        failures.append(str(e))
                    continue
                with lock:
                    held.append(conn)

        t0 = time.monotonic()
        on_threads(attacker, range(cap))
        # Settled: the relayed count no longer moves for a second.
        last, still = None, time.monotonic()
        while time.monotonic() - still < 1 and time.monotonic() - t0 < 60:
            now = door.signalling()[0]
            if now != last:
                last, still = now, time.monotonic()
            time.sleep(0.1)
        m["attack_seconds"] = time.monotonic() - t0
        m["attack_joined"] = len(held)
        m["attack_failures"] = failures[:3]
        m["attack_open"] = door.signalling()[0]
        m["attack_rss"] = status_kib(pid, "VmRSS")
        m["attack_hwm"] = status_kib(pid, "VmHWM")
        for conn in held:
            conn.sock.close()
        door.ended(timeout=30)
        m["attack_after"] = status_kib(pid, "VmRSS")
        with open(door.log, errors="replace") as f:
            m["attack_budget_lines"] = sum(1 for line in f if "memory budget is spent" in line)

    def silent(self, door, m):
        """A client that joins and then neither reads nor sends: how long until
        its connection ends, and who ended it (the daemon's log line)."""
        log("bench: livekit: a silent client (joins, then neither reads nor sends; up to 180 s)")
        open_before = door.signalling()[0]
        conn, _, _ = lk_join(door.port, f"silent-{START_EPOCH:x}", f"bench-silent-{START_EPOCH:x}")
        t0 = time.monotonic()
        while door.signalling()[0] > open_before and time.monotonic() - t0 < 180:
            time.sleep(0.5)
        m["silent_seconds"] = time.monotonic() - t0
        m["silent_ended_by"] = "still open after 180 s"
        if door.signalling()[0] <= open_before:
            # Its line is the last: every other connection had ended before it opened.
            with open(door.log, errors="replace") as f:
                last = [line for line in f if "signalling connection" in line][-1]
            code = re.search(r"close_code=(\d+)", last)
            m["silent_ended_by"] = (re.search(r"ended_by=(\S+)", last)[1]
                                    + (f", close code {code[1]}" if code else ", no close frame"))
        conn.sock.close()

    def run(self):
        joins = int(self.lk_joins)
        participants = int(self.lk_participants)
        rooms = max(1, participants // 10)
        binary = livekit_bin()
        lk = LiveKit(binary)
        run_id = f"{START_EPOCH:x}"  # fresh identities and rooms per run
        started = []  # (fake Cloudflare, front door) pairs, to stop after each group

        def case(label, prefix, room, cf_latency=None, verify=False, same_identity=False):
            c = {"label": label, "port": lk.port,
                 "identity": (lambda i: f"{prefix}-{run_id}") if same_identity else (lambda i: f"{prefix}-{run_id}-{i:04d}"),
                 "room": room if callable(room) else (lambda _identity: f"{room}-{run_id}")}
            if cf_latency is not None:
                c["cf"] = FakeCloudflare(cf_latency)
                c["door"] = FrontDoor(prefix, c["cf"], lk.port, verify)
                c["port"] = c["door"].port
                started.append((c["cf"], c["door"]))
            return c

        def stop_started():
            for cf, door in started:
                door.stop()
                cf.stop()
            started.clear()

        # One room per row, there before the counted joins (the warm-up made it).
        # A hit: one identity throughout; the warm-up join minted its credential.
        self.join_rows([
            case("straight to LiveKit (no daemon)", "direct", "direct"),
            case("daemon, reuse hit (same identity; CF 150 ms)", "hit", "hit", 150, same_identity=True),
            case("daemon, miss, CF 150 ms, no verifying key", "miss", "miss", 150),
            case("daemon, miss, CF 150 ms, LIVEKIT_KEY + LIVEKIT_SECRET", "early", "early", 150, verify=True),
        ], joins)
        stop_started()
        # Past the hold bound: the join goes on as LiveKit sent it.
        self.join_rows([case("daemon, miss, CF 2000 ms (past JOIN_HOLD), no verifying key", "late", "late", 2000)],
                       int(self.lk_late_joins))
        stop_started()

        cf0 = FakeCloudflare(0)
        mem = self.memory(lk, cf0, participants, rooms)
        cf0.stop()

        # A new room per join: LiveKit creates it before its join, the set-up
        # an early mint overlaps. Last, so that these rooms (LiveKit keeps an
        # empty one for its departure timeout, 20 s) do not count in its RSS above.
        def own_room(identity):
            return f"room-of-{identity}"

        self.join_rows([
            case("straight to LiveKit, new room per join", "direct-new", own_room),
            case("daemon, miss, CF 150 ms, no verifying key, new room per join", "miss-new", own_room, 150),
            case("daemon, miss, CF 150 ms, LIVEKIT_KEY + LIVEKIT_SECRET, new room per join", "early-new", own_room,
                 150, verify=True),
        ], joins)
        stop_started()
        lk_version = tool_version([binary, "--version"])
        lk.stop()
        self.emit_livekit(mem, participants, rooms, lk_version)

    def emit_livekit(self, m, participants, rooms, lk_version):
        mib = kib_to_mib
        per_conn = (m["rss"] - m["idle_rss"]) / participants
        rows = self.lk_rows
        lines = [
            "# matrix-turnify benchmark: the LiveKit front door",
            "",
            f"Command: `LIVEKIT_JOINS={self.lk_joins} LIVEKIT_LATE_JOINS={self.lk_late_joins} "
            f"LIVEKIT_PARTICIPANTS={self.lk_participants} bash bench/run.sh livekit`",
            "",
            "## Machine",
            "",
            f"- nproc: {len(os.sched_getaffinity(0))}",
            f"- load average before measuring: {self.report.load_start} (1/5/15 min)",
            f"- LiveKit: {lk_version} (real, from .ci/go_peers.py; loopback, its TURN off)",
            f"- tools: {tool_version(['rustc', '--version'], 2)}, Python {sys.version.split()[0]}",
            f"- commit: {(git('rev-parse', '--short', 'HEAD') or 'unknown').strip()}",
            "",
            "## Join latency",
            "",
            "Every row against the real livekit-server, each through a daemon and fake Cloudflare of its",
            "own. From the start of the TCP connect (the WebSocket upgrade on a fresh connection) to the",
            "whole first binary message, LiveKit's SignalResponse join; each join is left (LeaveRequest,",
            "close frame) before the next. The rows of a group (first four, fifth, last three) take turns,",
            "one join each per round. The first join of each row is a warm-up and not counted; on the hit",
            "row it is the join that minted the credential.",
            "Carrying the entry: the join's ICE servers include the fake Cloudflare's turn.cloudflare.com",
            "URIs, as the client read them. The daemon's `turn` outcomes: its",
            "turnify_livekit_signalling_connections_total{turn} over the counted joins. CF mints: the fake",
            "Cloudflare's count over them (a mint still under way when the row ends is not in it).",
            "",
            *self.join_table(rows),
            "",
            "## Memory",
            "",
            f"{participants} signalling connections through the daemon to LiveKit ({rooms} rooms of "
            f"{participants // rooms}), reuse on, no verifying key, CF latency 0; opened by 8 threads in "
            f"{m['join_seconds']:.1f} s, each then sent a ping_req at once and every {Keeper.PING_INTERVAL} s "
            "(LiveKit's ping interval), WebSocket pings answered.",
            "",
            "| measure | value |",
            "|---|---:|",
            f"| daemon VmRSS idle (front door up, no connection) | {mib(m['idle_rss'])} MiB |",
            f"| daemon VmHWM idle | {mib(m['idle_hwm'])} MiB |",
            f"| connections open and answering pings (t = {m['at']:.1f} s after the first join) "
            f"| {m['answered']}/{participants} |",
            f"| daemon VmRSS with {participants} connections | {mib(m['rss'])} MiB |",
            f"| daemon VmHWM with {participants} connections | {mib(m['hwm'])} MiB |",
            f"| daemon RSS per connection ((with − idle) ÷ {participants}) | {per_conn:.1f} KiB |",
            f"| connections the daemon relayed then (its /metrics) | {m['relayed']} |",
            f"| daemon sockets idle / with {participants} connections | {m['idle_sockets']} / {m['sockets']} |",
            f"| daemon threads | {m['threads']} |",
            f"| still open after two more ping rounds (t = {m['at2']:.1f} s) | {m['answered2']}/{participants} |",
            f"| daemon VmRSS then | {mib(m['rss2'])} MiB |",
            f"| daemon VmRSS after all left ({m['after_open']} relayed, {m['after_sockets']} sockets) "
            f"| {mib(m['after_rss'])} MiB |",
            f"| LiveKit VmRSS idle / with {participants} participants (VmHWM) "
            f"| {mib(m['lk_idle_rss'])} / {mib(m['lk_rss'])} MiB ({mib(m['lk_hwm'])}) |",
            f"| joins that carried the Cloudflare entry | {m['carried']}/{participants} |",
            f"| pings sent / pongs received | {m['pings']} / {m['pongs']} |",
            "",
            "LiveKit removes a participant that has not connected its media within a minute of joining",
            "(room.go, ParticipantCloseReasonJoinTimeout); these connections have no media, so every",
            "reading above is taken within that minute.",
            "",
            f"Then, on the same daemon, one connection and two client messages of exactly MAX_CLIENT_MESSAGE_BYTES "
            f"({m['max_bytes']} bytes, a SignalRequest with only a field LiveKit does not know, so nothing "
            "comes back), each followed by a ping whose pong shows it went through:",
            "",
            "| measure | value |",
            "|---|---:|",
            f"| daemon VmRSS, one connection open | {mib(m['large_before'])} MiB |",
            f"| after the first message | {mib(m['large_1'])} MiB "
            f"(+{(m['large_1'] - m['large_before']) / 1024:.1f} MiB) |",
            f"| after the second, same connection | {mib(m['large_2'])} MiB |",
            f"| after the connection closed | {mib(m['large_after'])} MiB |",
            "",
            f"The memory attack: as many connections as the LiveKit door's cap ({m['attack_cap']}), each joined "
            f"with a valid token (100 rooms), then holding the first {m['attack_hold']} bytes of a message declared "
            f"at {m['max_bytes']} bytes: FREE_MESSAGE_BYTES and an even share of RELAY_BUDGET_BYTES "
            f"({m['budget'] // 1048576} MiB), the most they can hold together:",
            "",
            "| measure | value |",
            "|---|---:|",
            f"| daemon VmRSS before | {mib(m['attack_before'])} MiB |",
            f"| connections joined and holding / still relayed once settled ({m['attack_seconds']:.1f} s) "
            f"| {m['attack_joined']} / {m['attack_open']} |",
            f"| daemon VmRSS while they hold | {mib(m['attack_rss'])} MiB |",
            f"| daemon VmHWM (peak since start) | {mib(m['attack_hwm'])} MiB |",
            f"| \"memory budget is spent\" warnings (throttled) | {m['attack_budget_lines']} |",
            f"| daemon VmRSS once they are gone | {mib(m['attack_after'])} MiB |",
            "",
            f"A silent client (joins, then neither reads nor sends): its connection ended after "
            f"{m['silent_seconds']:.1f} s ({m['silent_ended_by']}).",

        ]
        if m["keeper_errors"]:
            lines += ["", f"Keeper errors ({len(m['keeper_errors'])}): {m['keeper_errors'][:3]}"]
        hit, miss, early, late = rows[1], rows[2], rows[3], rows[4]
        spliced = [hit, miss, early, rows[6], rows[7]]
        misses = [miss, early, rows[6], rows[7]]
        lines += [
            "",
            "## Checks",
            "",
            *[pass_fail(r["carried"] == r["n"], f"{r['label']}: {r['carried']}/{r['n']} joins carried the "
                        "Cloudflare entry (all)") for r in spliced],
            pass_fail(hit["mints"] == 0, f"reuse hit: {hit['mints']} mints over {hit['n']} joins (0)"),
            *[pass_fail(r["mints"] == r["n"], f"{r['label']}: {r['mints']} mints over {r['n']} joins (one each)")
              for r in misses],
            pass_fail(late["carried"] == 0 and late["min"] >= 1500,
                      f"past JOIN_HOLD: {late['carried']}/{late['n']} carried the entry, fastest join "
                      f"{late['min']:.0f} ms (none; the join is held 1.5 s, then goes on unchanged)"),
            pass_fail(m["answered"] == participants and m["answered2"] == participants,
                      f"{participants} connections open and answering pings, twice ({m['answered']}, "
                      f"{m['answered2']})"),
            pass_fail(m["carried"] == participants,
                      f"memory run: {m['carried']}/{participants} joins carried the Cloudflare entry"),
            pass_fail(m["hwm"] < 20 * 1024, f"daemon peak RSS {mib(m['hwm'])} MiB with {participants} "
                      "connections (< 20 MiB)"),
            "",
            self.report.footer(),
        ]
        self.report.emit(lines, "livekit-results.md")
