#!/usr/bin/env python3
"""A participant whose network lets out only TLS on port 443 gets through,
on both call paths: calls across network namespaces this script makes, in
Debian's Chromium and Firefox ESR, with no ICE policy forced.

    python3 tests/e2e/firewall.py        (from anywhere; root on Debian 12)

The network (addresses from the documentation ranges, in these namespaces
only; all of it removed at exit, on failure and on SIGINT/SIGTERM too):
- "out" (fw-out-PID): an interface with 203.0.113.10 (the HTTPS ingress:
  Debian's nginx, TLS on 443; livekit.fw.test includes the shipped
  deploy/nginx/livekit.conf with its backend set to the daemon's LiveKit
  front door, matrix.fw.test deploy/nginx/matrix-turnify.conf and
  upstreams.conf), 203.0.113.20 (coturn, the stand-in for
  turn.cloudflare.com: TURN REST secret, UDP and TCP on 3478, TLS on 443)
  and 203.0.113.30 (livekit-server v1.13.5's ICE, one UDP port; no TCP
  ICE). LiveKit's signalling, Synapse 1.163.2 (no TURN of its own), the
  release daemon and the fake Cloudflare (minting coturn credentials for
  turn:/turns: URIs on turn.fw.test) listen on its loopback. This script
  itself runs in it once everything is built.
- "restricted" (fw-res-PID, 192.0.2.2): one participant's browser. nftables
  lets out of its interface only TCP to port 443 of 203.0.113.10 and .20
  (at the egress hook, where a drop is silent, as on a network's firewall);
  everything else, UDP and DNS included, is dropped, and nothing comes in
  but replies. Names come from
  /etc/netns/fw-res-PID/hosts (ip netns exec mounts it over /etc/hosts) and,
  for Chromium, --host-resolver-rules.
- "open" (fw-open-PID, 198.51.100.2): the other participant, no filter.

The browsers trust the run's own CA: Chromium through the NSS database in
$HOME/.pki/nssdb, Firefox through its profile's cert9.db (certutil), which is
what both read for HTTPS, the signalling WebSocket and TURN over TLS; node
(matrix-js-sdk) through NODE_EXTRA_CA_CERTS.

Two call paths, each participant its own browser:
- MatrixRTC (js/firewall_call.mjs): livekit-client 2.21.0 joins one room
  through wss://livekit.fw.test (nginx, the daemon, LiveKit), publishes a
  canvas video track and sends data;
- legacy (js/firewall_legacy.mjs): matrix-js-sdk logs Alice and Bob in
  through https://matrix.fw.test and asks turnServer (nginx, the daemon,
  Synapse); Alice (the timed one) calls Bob with getTurnServers() as the ICE
  servers, offer, answer and candidates as m.call.* events of their room;
  video and a data channel both ways.
Per browser and path, E2E_FIREWALL_TRIALS (default 1; 3 for medians) pairs of calls,
alternated, the open participant in place before the timed one starts:
- "open": the timed participant unrestricted (the nftables table removed);
- "restricted": the same participant behind the firewall. Asserted: both
  connect; each decodes the other's video and gets its data; no ICE policy
  was forced (the peer connections' configuration says "all"); every live
  peer connection's selected pair succeeded with a local `relay` candidate
  whose relayProtocol is `tls`; its ICE servers are the daemon's entry (the
  fake Cloudflare's URIs and a username; after LiveKit's STUN entry on the
  MatrixRTC path, and the username of the turnServer answer on the legacy
  one); coturn logged a successful ALLOCATE for that username in a session
  opened over TLS; the daemon minted (or reused) one credential per
  participant and /metrics counted both; the firewall dropped UDP the
  browser sent (its counters);
then one "control", restricted, without the daemon: through
livekit-direct.fw.test (nginx straight to LiveKit: its own list, one STUN
entry) or matrix-direct.fw.test (Synapse's guide's location, turnServer
answered by Synapse: {}); it must not connect within CONTROL_MS.
Recorded (printed as `# …` lines and in .work/firewall/summary.json): the
candidate types gathered and selected, coturn's lines for the allocation,
the time to connected and to the first decoded frame of the other's video,
restricted and open, and the firewall's counters. E2E_FIREWALL_BROWSERS and
E2E_FIREWALL_PATHS (comma-separated) narrow a run by hand.

Prints SKIPPED (exit 0) without root or network namespaces, or where the
module proxy refuses LiveKit. Logs: tests/e2e/.work/firewall/.
"""

import atexit
import ctypes
import json
import os
import queue
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
JS = HERE / "js"
sys.path.insert(0, str(HERE / "lib"))
import e2e  # noqa: E402  (tests/e2e/lib/e2e.py)
import install  # noqa: E402
import lkclient  # noqa: E402
from supervise import SUPERVISOR  # noqa: E402

WORK = HERE / ".work" / "firewall"
SUITE = e2e.Suite("firewall", WORK)
check = SUITE.check

INGRESS, TURN, LIVEKIT_ICE = "203.0.113.10", "203.0.113.20", "203.0.113.30"
RESTRICTED, OPEN = ("192.0.2.1", "192.0.2.2"), ("198.51.100.1", "198.51.100.2")
INGRESS_NAMES = ["livekit.fw.test", "livekit-direct.fw.test", "matrix.fw.test", "matrix-direct.fw.test"]
NAMES = {**{n: INGRESS for n in INGRESS_NAMES}, "turn.fw.test": TURN}
# Cloudflare's answer, mapped onto coturn: only the last one passes the firewall.
TURN_URLS = ["turn:turn.fw.test:3478?transport=udp", "turn:turn.fw.test:3478?transport=tcp",
             "turns:turn.fw.test:443?transport=tcp"]
LK_KEY = "e2e-firewall-key"
CF_KEY_ID, CF_TOKEN = "firewall-e2e-key", "firewall-e2e-token"
BROWSERS = {"chromium": "chromium", "firefox": "firefox-esr"}
CALL_MS = 30000      # a call's bound for each step: connect, first media, pairs settled
CONTROL_MS = 10000   # livekit-client's peerConnectionTimeout in the control: no call within it
# Open and restricted calls per browser, for the times to first media (E2E_FIREWALL_TRIALS).
TRIALS = int(os.environ.get("E2E_FIREWALL_TRIALS", "1"))
LK_PORT, LK_UDP_PORT = 7880, 7882  # in the out namespace, which is ours alone
CLONE_NEWNET = 0x40000000
# tests/e2e/run.sh's venv and signing key, shared with it (kept between runs).
SYNAPSE_VERSION = "1.163.2"
VENV = HERE / ".work" / "venv"
SIGNING_KEY = HERE / ".work" / "keys" / "signing.key"
USERS = {"subject": ("alice", "alice-firewall-password"), "peer": ("bob", "bob-firewall-password")}


def say(text):
    print(f"# {text}", flush=True)


def run(cmd, ns=None, check_rc=True, **kw):
    """A short command, in the network namespace NS when given; its CompletedProcess."""
    full = ["ip", "netns", "exec", ns, *map(str, cmd)] if ns else list(map(str, cmd))
    p = subprocess.run(full, capture_output=True, text=True, timeout=60, **kw)
    if check_rc and p.returncode != 0:
        raise RuntimeError(f"{' '.join(full)}: exit {p.returncode}: {(p.stderr or p.stdout).strip()[-400:]}")
    return p


# --------------------------------------------------------------------------- the network

class Network:
    """The three namespaces, their links, hosts files and the restricted one's
    firewall. remove() undoes all of it and is safe to call twice."""

    def __init__(self):
        pid = os.getpid()
        self.out, self.res, self.open = f"fw-out-{pid}", f"fw-res-{pid}", f"fw-open-{pid}"
        self.made = []

    def create(self):
        for ns in (self.out, self.res, self.open):
            run(["ip", "netns", "add", ns])
            self.made.append(ns)
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        # A veth pair whose far end stays unused holds the servers' addresses
        # (no dummy interfaces on every kernel): LiveKit's interface filter names it.
        run(["ip", "-n", self.out, "link", "add", "srv", "type", "veth", "peer", "name", "srv-end"])
        run(["ip", "-n", self.out, "link", "set", "srv-end", "up"])
        for a in (INGRESS, TURN, LIVEKIT_ICE):
            run(["ip", "-n", self.out, "addr", "add", f"{a}/24", "dev", "srv"])
        run(["ip", "-n", self.out, "link", "set", "srv", "up"])
        for ns, (gw, addr), link in ((self.res, RESTRICTED, "vres"), (self.open, OPEN, "vopen")):
            # Created straight into the namespaces: no name is taken in the host's.
            run(["ip", "link", "add", link, "netns", self.out, "type", "veth", "peer", "name", "eth0", "netns", ns])
            run(["ip", "-n", self.out, "addr", "add", f"{gw}/24", "dev", link])
            run(["ip", "-n", self.out, "link", "set", link, "up"])
            run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0"])
            run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            run(["ip", "-n", ns, "route", "add", "default", "via", gw])
            etc = Path("/etc/netns") / ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text("127.0.0.1 localhost\n" + "".join(f"{a} {n}\n" for n, a in NAMES.items()))
            # Nothing answers DNS on that namespace's loopback: a name not in hosts fails at once.
            (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")

    def restrict(self, on):
        """The restricted namespace's firewall, on or off (the tables removed).
        What goes out is filtered at the interface's egress hook, where a drop
        is silent, as on a network's firewall: a drop in the output hook makes
        the browser's own send fail at once (EPERM), and Firefox then takes
        every ICE check for failed before its TLS relay candidate exists,
        which no real network does."""
        for table in (("netdev", "fw"), ("inet", "fw")):
            run(["nft", "delete", "table", *table], ns=self.res, check_rc=False)
        if not on:
            return
        rules = f"""table netdev fw {{
    chain egress {{
        type filter hook egress device "eth0" priority 0; policy drop;
        meta protocol arp accept
        ip daddr {{ {INGRESS}, {TURN} }} tcp dport 443 accept
        ip protocol udp counter name udp_dropped drop
        counter name other_dropped drop
    }}
    counter udp_dropped {{ }}
    counter other_dropped {{ }}
}}
table inet fw {{
    chain input {{
        type filter hook input priority 0; policy drop;
        iifname "lo" accept
        ct state established,related accept
        counter name in_dropped drop
    }}
    counter in_dropped {{ }}
}}
"""
        path = WORK / "restricted.nft"
        path.write_text(rules)
        run(["nft", "-f", path], ns=self.res)

    def counters(self):
        """The firewall's drop counters: {name: packets}."""
        p = run(["nft", "-j", "list", "counters"], ns=self.res)
        out = {}
        for item in json.loads(p.stdout).get("nftables", []):
            c = item.get("counter")
            if c:
                out[c["name"]] = c["packets"]
        return out

    def remove(self):
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=60)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
        self.made = []


def namespaces_usable():
    """Why network namespaces cannot be made here, or None (ip installed)."""
    probe = f"fw-probe-{os.getpid()}"
    p = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        return f"ip netns add failed: {p.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return None


def enter(ns):
    """Moves this process's main thread (and so every child it starts) into NS."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns}")
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- installs, CA

def installs():
    """What this suite needs: Debian packages, npm's and run.sh's Synapse venv, through lib/install.py."""
    tools = {"turnserver": "coturn", "chromium": "chromium", "firefox-esr": "firefox-esr", "nginx": "nginx",
             "certutil": "libnss3-tools", "openssl": "openssl", "nft": "nftables", "ip": "iproute2"}
    log_path = WORK / "install.log"
    with open(log_path, "w") as log:
        install.apt(sorted(set(tools.values())), log)
        npm = install.npm_ci(JS, log)
        synapse = install.venv(VENV, [f"matrix-synapse=={SYNAPSE_VERSION}"], log)
    still = [t for t in tools if not shutil.which(t)]
    return ([f"{' '.join(still)} not installed (see {log_path})"] if still else []) \
        + ([] if npm else [f"npm ci failed (see {log_path})"]) \
        + ([] if synapse else [f"matrix-synapse {SYNAPSE_VERSION} not installed in {VENV} (see {log_path})"])


def make_ca():
    """A throwaway CA and two server certificates from it: the ingress's
    (INGRESS_NAMES) and coturn's (turn.fw.test)."""
    ca = WORK / "ca"
    ca.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run(["openssl", "req", "-x509", *ec, "-days", "2", "-subj", "/CN=matrix-turnify firewall e2e throwaway CA",
         "-keyout", ca / "ca.key", "-out", ca / "ca.pem", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    for name, hosts in (("ingress", INGRESS_NAMES), ("turn", ["turn.fw.test"])):
        run(["openssl", "req", *ec, "-subj", f"/CN={hosts[0]}", "-keyout", ca / f"{name}.key", "-out", ca / f"{name}.csr"])
        (ca / f"{name}.ext").write_text(f"subjectAltName={','.join('DNS:' + h for h in hosts)}\n"
                                        "extendedKeyUsage=serverAuth\nbasicConstraints=critical,CA:FALSE\n"
                                        "keyUsage=critical,digitalSignature\n")
        run(["openssl", "x509", "-req", "-in", ca / f"{name}.csr", "-CA", ca / "ca.pem", "-CAkey", ca / "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", ca / f"{name}.ext", "-out", ca / f"{name}.pem"])
    return ca


def trust(db, ca):
    """An NSS database in DB (created) trusting the CA for TLS servers."""
    db.mkdir(parents=True, exist_ok=True)
    run(["certutil", "-N", "-d", f"sql:{db}", "--empty-password"])
    run(["certutil", "-A", "-d", f"sql:{db}", "-n", "matrix-turnify firewall e2e CA", "-t", "C,,", "-i", ca / "ca.pem"])


# --------------------------------------------------------------------------- the servers (in "out")

def start_coturn(ca, secret):
    """coturn on TURN's address: UDP and TCP on 3478, TLS on 443 with the CA's
    certificate, the TURN REST secret, --verbose for the per-user ALLOCATE lines."""
    log = WORK / "coturn.log"
    p = SUITE.start(log, ["turnserver", "-n", "--no-cli", "--log-file=stdout", "--simple-log",
                          f"--pidfile={WORK / 'coturn.pid'}", f"--listening-ip={TURN}", f"--relay-ip={TURN}",
                          "--listening-port=3478", "--tls-listening-port=443", f"--cert={ca / 'turn.pem'}",
                          f"--pkey={ca / 'turn.key'}", "--min-port=50000", "--max-port=50999", "--no-dtls",
                          "--use-auth-secret", f"--static-auth-secret={secret}", "--realm=matrix-turnify.e2e",
                          "--verbose"])
    for line in (f"UDP listener opened on: {TURN}:3478", f"TLS/TCP listener opened on : {TURN}:443"):
        e2e.wait_line(log, re.escape(line), 20, p.pid)
    return log


def start_livekit(bindir, secret):
    """livekit-server: signalling on the out namespace's loopback (the daemon
    and nginx reach it there), ICE on one UDP port of LIVEKIT_ICE only, no
    TCP ICE, no external-IP lookup, and coturn's STUN as the list it hands out."""
    cfg = {
        "port": LK_PORT,
        "bind_addresses": ["127.0.0.1"],
        "keys": {LK_KEY: secret},
        "rtc": {
            "udp_port": LK_UDP_PORT,
            "tcp_port": 0,
            "use_external_ip": False,
            "node_ip": LIVEKIT_ICE,
            "interfaces": {"includes": ["srv"]},
            "ips": {"includes": [f"{LIVEKIT_ICE}/32"]},
            "stun_servers": [f"{TURN}:3478"],
        },
        "turn": {"enabled": False},
        "logging": {"level": "info"},
    }
    path = WORK / "livekit.yaml"
    path.write_text(json.dumps(cfg, indent=1))
    p = SUITE.start(WORK / "livekit.log", [bindir / "livekit-server", "--config", path])
    e2e.wait_http(f"http://127.0.0.1:{LK_PORT}/", timeout=60, pid=p.pid)


def start_synapse():
    """Synapse on the out namespace's loopback, no TURN of its own (lib/e2e.py's
    variant A), with the two users; returns its base URL."""
    if not SIGNING_KEY.exists():
        SIGNING_KEY.parent.mkdir(parents=True, exist_ok=True)
        run([VENV / "bin" / "generate_signing_key", "-o", SIGNING_KEY])
    d = WORK / "synapse"
    (port,) = e2e.free_ports(1)
    secret = "e2e-registration-" + os.urandom(8).hex()
    run([sys.executable, HERE / "lib" / "e2e.py", "synapse-config", "--dir", d, "--port", port, "--variant", "A",
         "--signing-key", SIGNING_KEY, "--shared-secret", secret])
    p = SUITE.start(d / "stdout.log", [VENV / "bin" / "python", "-m", "synapse.app.homeserver", "-c",
                                       d / "homeserver.yaml"])
    base = f"http://127.0.0.1:{port}"
    e2e.wait_http(f"{base}/health", timeout=90, pid=p.pid)
    for user, password in USERS.values():
        run([VENV / "bin" / "register_new_matrix_user", "-u", user, "-p", password, "--no-admin", "-c",
             d / "homeserver.yaml", base])
    return base, port


def matrix_room(base):
    """A room Alice made and Bob joined (tokens of their own, asked of Synapse
    directly); its id. One for the run: each call is told apart by its
    call_id, and Synapse limits how fast rooms are made."""
    (alice, apw), (bob, bpw) = USERS["subject"], USERS["peer"]
    a_tok, _ = e2e.login(base, alice, apw, "FWSETUP")
    b_tok, b_id = e2e.login(base, bob, bpw, "FWSETUP")

    def post(tok, path, obj):
        st, _, body = e2e.request(base, "POST", path, [("Authorization", f"Bearer {tok}"),
                                                       ("Content-Type", "application/json")], json.dumps(obj).encode())
        if st != 200:
            raise RuntimeError(f"POST {path}: {st} {body[:300]!r}")
        return json.loads(body)

    room = post(a_tok, "/_matrix/client/v3/createRoom", {"preset": "private_chat", "invite": [b_id]})["room_id"]
    post(b_tok, f"/_matrix/client/v3/join/{room}", {})
    return room


def start_daemon(fake_base, listen_port, front_port, synapse):
    log = WORK / "daemon.log"
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root"),
           "SYNAPSE_BASE_URL": synapse,
           "CF_TURN_KEY_ID": CF_KEY_ID, "CF_TURN_API_TOKEN": CF_TOKEN, "CF_TURN_API_BASE_URL": fake_base,
           "LIVEKIT_SFU_URL": f"http://127.0.0.1:{LK_PORT}", "LIVEKIT_LISTEN_ADDR": f"127.0.0.1:{front_port}",
           "LISTEN_ADDR": f"127.0.0.1:{listen_port}", "LOG_LEVEL": "info", "LOG_FORMAT": "json"}
    p = SUITE.start(log, [e2e.DAEMON], env=env)
    base = f"http://127.0.0.1:{listen_port}"
    e2e.wait_http(f"{base}/healthz", timeout=30, pid=p.pid)
    return base


def start_nginx(ca, front_port, listen_port, synapse_port):
    """Debian's nginx on INGRESS:443 with the CA's certificate: livekit.fw.test
    includes deploy/nginx/livekit.conf with its backend set to the daemon's
    front door; livekit-direct.fw.test the same snippet with LiveKit itself as
    the backend (what the snippet's own comment says runs without the daemon)."""
    d = WORK / "nginx"
    (d / "temp").mkdir(parents=True)
    shipped = (e2e.ROOT / "deploy" / "nginx" / "livekit.conf").read_text()
    servers = ""
    for name, backend in (("livekit.fw.test", front_port), ("livekit-direct.fw.test", LK_PORT)):
        conf, n = re.subn(r"proxy_pass(\s+)http://matrix-turnify:7880;", rf"proxy_pass\g<1>http://127.0.0.1:{backend};",
                          shipped)
        if n != 1:
            raise RuntimeError(f"deploy/nginx/livekit.conf has {n} 'proxy_pass http://matrix-turnify:7880;' lines, not 1")
        (d / f"{name}.conf").write_text(conf)
        servers += f"""    server {{
        listen {INGRESS}:443 ssl;
        server_name {name};
        ssl_certificate {ca / 'ingress.pem'};
        ssl_certificate_key {ca / 'ingress.key'};
        include {d / (name + '.conf')};
    }}
"""
    upstreams = re.sub(r"server(\s+)matrix-turnify:4499;", rf"server\g<1>127.0.0.1:{listen_port};",
                       (e2e.ROOT / "deploy" / "nginx" / "upstreams.conf").read_text())
    upstreams = re.sub(r"server(\s+)synapse:8008;", rf"server\g<1>127.0.0.1:{synapse_port};", upstreams)
    (d / "upstreams.conf").write_text(upstreams)
    # matrix.fw.test: the shipped snippet as shipped; matrix-direct.fw.test:
    # Synapse's own guide (everything to Synapse, turnServer included).
    for name, body in (("matrix.fw.test", f"include {e2e.ROOT / 'deploy' / 'nginx' / 'matrix-turnify.conf'};"),
                       ("matrix-direct.fw.test", "location ~ ^(/_matrix|/_synapse/client) {\n"
                        "            proxy_pass http://synapse;\n            proxy_set_header Host $host;\n"
                        "            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
                        "            proxy_set_header X-Forwarded-Proto $scheme;\n        }")):
        servers += f"""    server {{
        listen {INGRESS}:443 ssl;
        server_name {name};
        ssl_certificate {ca / 'ingress.pem'};
        ssl_certificate_key {ca / 'ingress.key'};
        {body}
    }}
"""
    (d / "nginx.conf").write_text(e2e.nginx_conf(d, f"    include {d / 'upstreams.conf'};\n{servers}", connections=256,
                                                 user_root=True))
    args = ["-p", d, "-c", d / "nginx.conf", "-e", d / "error.log"]
    run(["nginx", "-t", "-q", *args])
    p = SUITE.start(d / "stdout.log", ["nginx", *args])
    for name, path in (("livekit.fw.test", "/"), ("livekit-direct.fw.test", "/"),
                       ("matrix.fw.test", "/_matrix/client/versions"), ("matrix-direct.fw.test", "/_matrix/client/versions")):
        if not e2e.wait_until(lambda n=name, q=path: https_get(ca, n, q)[0] == 200, 20, pid=p.pid):
            raise RuntimeError(f"https://{name}{path} through nginx: {https_get(ca, name, path)}")


def https_get(ca, name, path):
    """GET https://NAME/PATH at the ingress, the CA trusted: (status, body), or (None, error)."""
    ctx = ssl.create_default_context(cafile=str(ca / "ca.pem"))
    try:
        with socket.create_connection((INGRESS, 443), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname=name) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split(b" ")[1]), body
    except (OSError, ValueError, IndexError) as e:
        return None, repr(e)


def metrics(base):
    """The daemon's counts: ended signalling connections by turn word
    ("livekit:WORD") and turnServer answers by outcome ("matrix:OUTCOME")."""
    st, _, body = e2e.request(base, "GET", "/metrics")
    if st != 200:
        raise RuntimeError(f"/metrics answered {st}")
    text = body.decode()
    out = {f"livekit:{m.group(1)}": int(m.group(2)) for m in
           re.finditer(r'^turnify_livekit_signalling_connections_total\{turn="([^"]+)"\} (\d+)$', text, re.M)}
    for m in re.finditer(r'^turnify_requests_total\{outcome="([^"]+)",auth="[^"]*"\} (\d+)$', text, re.M):
        out[f"matrix:{m.group(1)}"] = out.get(f"matrix:{m.group(1)}", 0) + int(m.group(2))
    return out


def allocation_lines(log, user):
    """coturn's lines of USER's sessions whose ALLOCATE succeeded: the session's
    "new" line (its TLS version, when over TLS) and the ALLOCATE's."""
    lines = Path(log).read_text(errors="replace").splitlines()
    sessions = {m.group(1) for x in lines
                if (m := re.search(rf"session (\d+): realm <[^>]*> user <{re.escape(user)}>: incoming packet ALLOCATE "
                                   r"processed, success", x))}
    return [x for x in lines for sid in sessions
            if f"session {sid}: new," in x or (f"session {sid}:" in x and "ALLOCATE processed, success" in x)]


def token(secret, identity, room):
    """A participant's HS256 LiveKit token: it publishes video and data, and subscribes."""
    now = int(time.time())
    return lkclient.jwt(secret, {"iss": LK_KEY, "sub": identity, "nbf": now - 10, "exp": now + 3600,
                                 "video": {"roomJoin": True, "room": room, "canPublish": True,
                                           "canSubscribe": True, "canPublishData": True}})


# --------------------------------------------------------------------------- one participant's browser

class Participant:
    """js/firewall_call.mjs in namespace NS, stepped line by line."""

    def __init__(self, net_ns, browser, role, plan):
        self.role = role
        d = WORK / f"{browser}-{plan['case']}-{role}"
        d.mkdir()
        plan = {**plan, "browser": browser, "executable": shutil.which(BROWSERS[browser]),
                "profile": str(d / "profile"), "home": str(d / "home")}
        # Chromium reads $HOME/.pki/nssdb; Firefox its profile's cert9.db.
        trust(d / "home" / ".pki" / "nssdb" if browser == "chromium" else d / "profile", Path(plan["ca"]))
        (d / "plan.json").write_text(json.dumps(plan, indent=1))
        self.lines = queue.Queue()
        self.err = open(d / "node.log", "wb")
        driver = "firewall_legacy.mjs" if plan.get("baseUrl") else "firewall_call.mjs"
        # matrix-js-sdk (node's fetch) trusts the CA through NODE_EXTRA_CA_CERTS.
        env = {**os.environ, "NODE_EXTRA_CA_CERTS": str(Path(plan["ca"]) / "ca.pem")}
        self.proc = SUPERVISOR.start(["ip", "netns", "exec", net_ns, "timeout", "300", "node", JS / driver,
                                      d / "plan.json"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, text=True, env=env)
        self.log = d / "node.log"
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put("end")

    def expect(self, word, timeout_s):
        """The JSON of the next WORD line; RuntimeError on the driver's end, error or the bound."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"{self.role}: no '{word}' within {timeout_s} s ({e2e.tail(self.log, 5)})")
            w, _, rest = line.partition(" ")
            if w == word:
                return json.loads(rest) if rest else {}
            if w in ("end", "error"):
                raise RuntimeError(f"{self.role}: driver said {line[:600]} before '{word}' ({e2e.tail(self.log, 5)})")

    def send(self, word):
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()

    def finish(self):
        try:
            self.send("leave")
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass  # stopped below, by its process group
        SUPERVISOR.stop(self.proc)
        self.err.close()


def call(net, ctx, browser, case):
    """One call: the open participant joins and publishes, then the timed one
    (restricted or not); returns what both reported."""
    name, restricted = case["name"], case["restricted"]
    net.restrict(restricted)
    room = f"{browser}-{case['label'].replace(' #', '-')}-{os.urandom(3).hex()}"
    legacy = case["path"] == "legacy"
    ids = ({r: u for r, (u, _) in USERS.items()} if legacy else
           {"peer": f"{room}-open", "subject": f"{room}-{'restricted' if restricted else 'timed'}"})
    timeout_ms = case["timeout_ms"]
    common = {"case": case["label"].replace(" #", "-").replace(" ", "-"), "ca": str(ctx["ca"]), "url": case["url"],
              "timeoutMs": timeout_ms, "hostRules": ", ".join(f"MAP {n} {a}" for n, a in NAMES.items())}
    if legacy:
        common |= {"baseUrl": case["url"], "roomId": ctx["room"], "callId": room}
    before = (metrics(ctx["daemon"]), e2e.fake_mints(ctx["fake"]))
    counters0 = net.counters() if restricted else {}
    out = {"case": name, "path": case["path"]}
    ps = {}
    try:
        for role, ns, other in (("peer", net.open, "subject"), ("subject", net.res, "peer")):
            own = ({"user": USERS[role][0], "password": USERS[role][1], "caller": role == "subject"} if legacy
                   else {"token": token(ctx["lk_secret"], ids[role], room)})
            ps[role] = Participant(ns, browser, role, {**common, **own, "identity": ids[role], "peer": ids[other]})
        for p in ps.values():
            out.setdefault("version", p.expect("ready", 90).get("version"))
        ps["peer"].send("go")
        out["peer_joined"] = ps["peer"].expect("joined", timeout_ms / 1000 + 30)
        if out["peer_joined"].get("connectedMs") is None:
            raise RuntimeError(f"the open participant did not connect: {out['peer_joined']}")
        t = time.monotonic()
        ps["subject"].send("go")
        out["joined"] = ps["subject"].expect("joined", timeout_ms / 1000 + 30)
        out["join_wall_s"] = round(time.monotonic() - t, 1)
        if out["joined"].get("connectedMs") is not None:
            for role, p in ps.items():
                out[f"{role}_media"] = p.expect("media", timeout_ms / 1000 + 30)
        for role, p in ps.items():
            p.send("report")
            out[f"{role}_report"] = p.expect("report", timeout_ms / 1000 + 30)
    finally:
        for p in ps.values():
            p.finish()
    if restricted:
        c = net.counters()
        out["firewall"] = {k: v - counters0.get(k, 0) for k, v in c.items()}
    # Each participant's signalling connection ends when its browser leaves;
    # each user's turnServer answer is counted as it is sent.
    want = 0 if case.get("direct") else 2
    prefix = "matrix:" if legacy else "livekit:"
    e2e.wait_until(lambda: sum(v - before[0].get(k, 0) for k, v in metrics(ctx["daemon"]).items()
                               if k.startswith(prefix)) >= want, 15)
    now = metrics(ctx["daemon"])
    out["daemon_delta"] = {k: v - before[0].get(k, 0) for k, v in now.items() if v - before[0].get(k, 0)}
    out["mints"] = e2e.fake_mints(ctx["fake"]) - before[1]
    return out


# --------------------------------------------------------------------------- checks

def live_pairs(report):
    return [p for p in (report or {}).get("pairs") or [] if p.get("pair")]


def pair_text(p):
    loc, rem = p["pair"].get("local") or {}, p["pair"].get("remote") or {}
    return f"{loc.get('candidateType')}({loc.get('relayProtocol') or loc.get('protocol')})/{rem.get('candidateType')}"


def check_media(ctx, b, label, r):
    m = [r.get("subject_media") or {}, r.get("peer_media") or {}]
    check(f"{b} {label}: both participants connect", [] if r.get("joined", {}).get("connectedMs") is not None
          else [f"{r.get('joined')}"])
    check(f"{b} {label}: each decodes the other's video and receives its data",
          [] if all(x.get("firstFrameMs") is not None and x.get("waitedMs") is not None for x in m)
          else [f"timed participant {m[0]}"[:600], f"open participant {m[1]}"[:600]])
    problems = []
    for role in ("subject", "peer"):
        for p in (r.get(f"{role}_report") or {}).get("pairs") or []:
            if p.get("iceTransportPolicy") not in (None, "all"):
                problems.append(f"{role} pc {p['pc']}: iceTransportPolicy {p.get('iceTransportPolicy')}")
    check(f"{b} {label}: no ICE policy forced (every peer connection's is \"all\")", problems)


def check_restricted(ctx, b, label, r):
    check_media(ctx, b, label, r)
    rep = r.get("subject_report") or {}
    pairs = live_pairs(rep)
    problems = [] if pairs else [f"no selected pair: {rep.get('pairs')}"]
    for p in pairs:
        loc = p["pair"].get("local") or {}
        if p["pair"].get("state") != "succeeded" or loc.get("candidateType") != "relay" or loc.get("relayProtocol") != "tls":
            problems.append(f"pc {p['pc']}: {p['pair']}")
    check(f"{b} {label}: every live peer connection's selected pair succeeded on a local relay candidate "
          f"whose relayProtocol is tls", problems)
    legacy = r["path"] == "legacy"
    users, problems = set(), []
    for p in pairs:
        servers = p.get("iceServers") or []
        ours = [s for s in servers if s["urls"] == TURN_URLS and s.get("username")]
        before = [] if legacy else [[f"stun:{TURN}:3478"]]
        if [x["urls"] for x in servers if x not in ours] != before or servers[len(before):] != ours:
            problems.append(f"pc {p['pc']}: iceServers {servers}")
        users |= {s["username"] for s in ours}
    if legacy:
        answer = [x.get("username") for x in ((rep.get("turn") or {}).get("servers") or [])]
        if answer != sorted(users):
            problems.append(f"the daemon's turnServer answer through the ingress named {answer}, the peer "
                            f"connection {sorted(users)}")
    what = ("the daemon's turnServer answer as matrix-js-sdk maps it: one entry, the fake Cloudflare's URIs and "
            "the username the ingress's turnServer answer named" if legacy else
            "LiveKit's STUN entry, then the daemon's entry (the fake Cloudflare's URIs and one username)")
    check(f"{b} {label}: those peer connections' ICE servers are {what}",
          problems + ([] if len(users) == 1 else [f"usernames {users}"]))
    lines = [x for u in users for x in allocation_lines(ctx["coturn_log"], u)]
    r["allocation"] = lines
    check(f"{b} {label}: coturn logged a successful ALLOCATE for that username, in a session over TLS",
          [] if any("ALLOCATE" in x for x in lines) and any("method=TLS" in x for x in lines)
          else [f"for {users} in {ctx['coturn_log']}: {lines}"])
    delta, mints = r.get("daemon_delta") or {}, r.get("mints")
    side = "matrix" if legacy else "livekit"
    minted, reused = delta.get(f"{side}:cloudflare", 0), delta.get(f"{side}:reused", 0)
    counted = "turnServer answers" if legacy else "signalling connections"
    check(f"{b} {label}: the daemon minted (or reused) a credential per participant and /metrics counted both "
          f"{counted} \"cloudflare\" or \"reused\", one fake Cloudflare mint per \"cloudflare\"",
          [] if minted + reused == 2 and mints == minted else [f"metrics delta {delta}, {mints} mints"])
    fw = r.get("firewall") or {}
    check(f"{b} {label}: the firewall was in force (it dropped UDP the browser sent)",
          [] if fw.get("udp_dropped", 0) > 0 else [f"counters {fw}"])


def check_control(ctx, b, label, r):
    j = r.get("joined") or {}
    rep = r.get("subject_report") or {}
    legacy = r["path"] == "legacy"
    where = "turnServer straight to Synapse" if legacy else "straight to LiveKit"
    check(f"{b} {label} ({where}, restricted): the call does not connect within {CONTROL_MS} ms",
          [] if j.get("connectedMs") is None and j.get("error") and r.get("join_wall_s", 99) < CONTROL_MS / 1000 + 15
          else [f"joined {j} after {r.get('join_wall_s')} s"])
    if legacy:
        servers = (j.get("turn") or {}).get("servers")
        check(f"{b} {label}: matrix-js-sdk got no TURN server from Synapse's answer",
              [] if servers == [] else [f"getTurnServers() {servers}"])
    else:
        servers = [e.get("iceServers") for e in rep.get("events") or []
                   if e["what"] in ("new RTCPeerConnection", "setConfiguration") and e.get("iceServers")]
        check(f"{b} {label}: the client got LiveKit's own list only (no TURN entry)",
              [] if servers and all(all(u.startswith("stun:") for s in ss for u in s["urls"]) for ss in servers)
              else [f"ICE servers set: {servers}"])
    fw = r.get("firewall") or {}
    check(f"{b} {label}: the firewall was in force (it dropped UDP the browser sent)",
          [] if fw.get("udp_dropped", 0) > 0 else [f"counters {fw}"])


def gathered(report):
    kinds = {}
    for p in (report or {}).get("pairs") or []:
        for k, n in (p.get("localCandidates") or {}).items():
            kinds[k] = kinds.get(k, 0) + n
    return kinds


def record(r):
    rep = r.get("subject_report") or {}
    m = r.get("subject_media") or {}
    return {
        "connected_ms": (r.get("joined") or {}).get("connectedMs"),
        "login_and_turnserver_ms": (r.get("joined") or {}).get("turnMs"),
        "first_video_bytes_ms": m.get("firstVideoBytesMs"),
        "first_frame_ms": m.get("firstFrameMs"),
        "selected": [pair_text(p) for p in live_pairs(rep)],
        "gathered": gathered(rep),
        "peer_selected": [pair_text(p) for p in live_pairs(r.get("peer_report"))],
        "error": (r.get("joined") or {}).get("error"),
        "join_wall_s": r.get("join_wall_s"),
        "allocation": r.get("allocation"),
        "firewall": r.get("firewall"),
        "daemon": r.get("daemon_delta"),
        "mints": r.get("mints"),
    }


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def print_summary(summary):
    for b, cs in summary.items():
        for name, runs in cs.items():
            c = runs[0]
            say(f"{b} {name}: {c['browser']}; selected {c['selected']} (open side {c['peer_selected']}); "
                f"gathered {c['gathered']}; firewall {c['firewall']}; daemon {c['daemon']}, {c['mints']} mints"
                + (f"; {c['error']} after {c['join_wall_s']} s" if c["error"] else ""))
            # The first session's two lines: opened over TLS, then the ALLOCATE.
            for line in (c.get("allocation") or [])[:2]:
                say(f"{b} {name}: coturn: {line}")
            if not name.endswith("control"):
                say(f"{b} {name}: connected {[x['connected_ms'] for x in runs]} ms (median "
                    f"{median([x['connected_ms'] for x in runs])}), first video frame "
                    f"{[x['first_frame_ms'] for x in runs]} ms (median {median([x['first_frame_ms'] for x in runs])})")


# --------------------------------------------------------------------------- main

def main():
    if os.geteuid() != 0:
        raise e2e.Skip("not root: network namespaces and nftables need it")
    bindir = SUITE.go_peer("livekit", "LiveKit")
    SUITE.fresh_work()
    SUITE.require("coturn, Chromium, Firefox ESR, nginx, certutil, nftables, iproute2 (apt), livekit-client, "
                  "matrix-js-sdk, puppeteer-core (npm) and Synapse (PyPI) installed",
                  installs())
    why = namespaces_usable()
    if why:
        raise e2e.Skip(why)
    SUITE.cargo_build()
    ca = make_ca()

    net = Network()
    atexit.register(net.remove)
    net.create()
    say(f"namespaces {net.out} (servers), {net.res} (restricted, {RESTRICTED[1]}), {net.open} (open, {OPEN[1]})")
    enter(net.out)

    turn_secret = "e2e-coturn-" + os.urandom(8).hex()
    lk_secret = "e2e-livekit-secret-" + os.urandom(16).hex()
    coturn_log = start_coturn(ca, turn_secret)
    start_livekit(bindir, lk_secret)
    synapse, synapse_port = start_synapse()
    fake_base = SUITE.start_fake_cloudflare(WORK / "fake-cloudflare.log", "--key-id", CF_KEY_ID, "--api-token",
                                            CF_TOKEN, "--turn-secret", turn_secret, "--turn-urls", ",".join(TURN_URLS))
    listen_port, front_port = e2e.free_ports(2)
    daemon = start_daemon(fake_base, listen_port, front_port, synapse)
    start_nginx(ca, front_port, listen_port, synapse_port)
    ctx = {"ca": ca, "daemon": daemon, "fake": fake_base.rsplit("/v1", 1)[0], "coturn_log": coturn_log,
           "lk_secret": lk_secret, "room": matrix_room(synapse)}

    paths = {"MatrixRTC": ("wss://livekit.fw.test", "wss://livekit-direct.fw.test"),
             "legacy": ("https://matrix.fw.test", "https://matrix-direct.fw.test")}
    wanted = [x for x in os.environ.get("E2E_FIREWALL_PATHS", "").split(",") if x]
    cases = []
    for path, (url, direct) in paths.items():
        if wanted and path not in wanted:
            continue
        # Alternated, so that a warm-up or a busy moment weighs on both alike.
        cases += [{"path": path, "name": n, "label": f"{path} {n}" + (f" #{i + 1}" if i else ""), "restricted": r,
                   "url": url, "timeout_ms": CALL_MS} for i in range(TRIALS) for n, r in (("open", False),
                                                                                          ("restricted", True))]
        cases.append({"path": path, "name": "control", "label": f"{path} control", "restricted": True, "url": direct,
                      "timeout_ms": CONTROL_MS, "direct": True})
    only = [b for b in os.environ.get("E2E_FIREWALL_BROWSERS", "").split(",") if b]
    summary = {}
    for b in BROWSERS:
        if only and b not in only:
            continue
        summary[b] = {}
        for case in cases:
            t = time.monotonic()
            try:
                r = call(net, ctx, b, case)
            except RuntimeError as e:
                check(f"{b} {case['label']}: the call ran to its end", [str(e)])
                continue
            {"open": check_media, "restricted": check_restricted, "control": check_control}[case["name"]](
                ctx, b, case["label"], r)
            summary[b].setdefault(f"{case['path']} {case['name']}", []).append(
                {**record(r), "wall_s": round(time.monotonic() - t, 1), "browser": r.get("version")})
            (WORK / f"{b}-{case['label'].replace(' #', '-').replace(' ', '-')}.json").write_text(json.dumps(r, indent=1))
    (WORK / "summary.json").write_text(json.dumps(summary, indent=1))
    print_summary(summary)
    return 0


if __name__ == "__main__":
    SUITE.run(main)
