"""A LiveKit signalling client for bench/bench.py's livekit mode and
tests/e2e/livekit.py: just enough
of a WebSocket client (RFC 6455), HS256 participant tokens and the protobuf
wire format to time a join, read its ICE servers, keep the connection alive
with pings and leave cleanly. Python 3 standard library only.

Field numbers are livekit_rtc.proto's (github.com/livekit/protocol, the
version livekit-server v1.13.5 builds with).
"""

import base64
import hashlib
import hmac
import json
import os
import re
import socket
import struct
import time
import urllib.parse

import e2e

# SignalResponse.join, JoinResponse.ice_servers, ICEServer.urls;
# JoinResponse.participant, ParticipantInfo.identity, ParticipantInfo.permission
# (livekit_models.proto), ParticipantPermission.can_publish.
SIGNAL_JOIN = 1
JOIN_ICE_SERVERS = 5
ICE_URLS = 1
JOIN_PARTICIPANT = 2
PARTICIPANT_IDENTITY = 2
PARTICIPANT_PERMISSION = 11
PERMISSION_CAN_PUBLISH = 2
# SignalRequest.leave, LeaveRequest.reason (DisconnectReason CLIENT_INITIATED = 1),
# SignalRequest.ping_req, Ping.timestamp; SignalResponse.pong_resp.
REQUEST_LEAVE = 8
LEAVE_REASON = 2
CLIENT_INITIATED = 1
REQUEST_PING_REQ = 16
PING_TIMESTAMP = 1
RESPONSE_PONG_RESP = 20
# A SignalRequest field number livekit_rtc.proto does not use.
UNKNOWN_FIELD = 100

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 2, 8, 9, 10


class ProtocolError(Exception):
    pass


# ------------------------------------------------------------------ tokens --

def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(secret, payload):
    """An HS256 token of the JSON text PAYLOAD as written: key order and repeated keys kept."""
    signed = f"{b64url(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{b64url(payload.encode())}"
    mac = hmac.new(secret.encode(), signed.encode(), hashlib.sha256).digest()
    return f"{signed}.{b64url(mac)}"


def jwt(secret, claims):
    return sign(secret, json.dumps(claims))


def token(api_key, secret, identity, room, ttl=600):
    """An HS256 participant token as livekit-server-sdk mints one: iss = the
    API key, sub = the identity, exp, nbf, and a grant to join ROOM."""
    now = int(time.time())
    return jwt(secret, {"iss": api_key, "sub": identity, "nbf": now - 10, "exp": now + ttl,
                        "video": {"roomJoin": True, "room": room}})


# ----------------------------------------------------------- the daemon's --

def counters(base):
    """The daemon's signalling counters from BASE/metrics: {turn word: ended
    connections}, and the open ones."""
    st, _, body = e2e.request(base, "GET", "/metrics", timeout=5)
    if st != 200:
        raise RuntimeError(f"{base}/metrics answered {st}")
    ended, opened = {}, None
    for line in body.decode().splitlines():
        if m := re.match(r'^turnify_livekit_signalling_connections_total\{turn="([^"]+)"\} (\d+)$', line):
            ended[m[1]] = int(m[2])
        elif m := re.match(r"^turnify_livekit_signalling_connections_open (\d+)$", line):
            opened = int(m[1])
    if opened is None:
        raise RuntimeError(f"no turnify_livekit_signalling_connections_open in {base}/metrics")
    return ended, opened


# ---------------------------------------------------------------- protobuf --

def varint(data, at):
    value = shift = 0
    while True:
        if at >= len(data):
            raise ProtocolError("truncated varint")
        b = data[at]
        at += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, at
        shift += 7


def put_varint(value):
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def fields(message):
    """(field number, wire type, value) of each field: an int for varints, bytes otherwise."""
    out, at = [], 0
    while at < len(message):
        key, at = varint(message, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = varint(message, at)
        elif wire == 1:
            value, at = message[at:at + 8], at + 8
        elif wire == 2:
            length, at = varint(message, at)
            value, at = message[at:at + length], at + length
        elif wire == 5:
            value, at = message[at:at + 4], at + 4
        else:
            raise ProtocolError(f"wire type {wire}")
        if at > len(message):
            raise ProtocolError("truncated field")
        out.append((number, wire, value))
    return out


def len_field(number, payload):
    return put_varint(number << 3 | 2) + put_varint(len(payload)) + payload


def varint_field(number, value):
    return put_varint(number << 3) + put_varint(value)


def join_of(frame):
    """The JoinResponse bytes of a SignalResponse frame, or None if it is no join."""
    for number, wire, value in fields(frame):
        if number == SIGNAL_JOIN and wire == 2:
            return value
    return None


def ice_urls(join):
    """The URLs of each ICE server of a JoinResponse, one list per server."""
    return [[bytes(u).decode() for n, w, u in fields(server) if n == ICE_URLS and w == 2]
            for number, wire, server in fields(join) if number == JOIN_ICE_SERVERS and wire == 2]


def admitted(join):
    """The identity of the participant a JoinResponse admits, or None."""
    for number, wire, info in fields(join):
        if number == JOIN_PARTICIPANT and wire == 2:
            for n, w, value in fields(info):
                if n == PARTICIPANT_IDENTITY and w == 2:
                    return bytes(value).decode()
    return None


def can_publish(join):
    """The admitted participant's permission.can_publish in a JoinResponse, as
    a decoder reads it (the last value wins, absent is False); None without a
    participant."""
    infos = [info for number, wire, info in fields(join) if number == JOIN_PARTICIPANT and wire == 2]
    if not infos:
        return None
    value = False
    for info in infos:
        for n, w, permission in fields(info):
            if n == PARTICIPANT_PERMISSION and w == 2:
                for k, kw, v in fields(permission):
                    if k == PERMISSION_CAN_PUBLISH and kw == 0:
                        value = v != 0
    return value


def leave_request():
    return len_field(REQUEST_LEAVE, varint_field(LEAVE_REASON, CLIENT_INITIATED))


def ping_request():
    return len_field(REQUEST_PING_REQ, varint_field(PING_TIMESTAMP, int(time.time() * 1000)))


def filler_request(size):
    """A SignalRequest of SIZE bytes (SIZE ≥ 8) whose only field, number
    UNKNOWN_FIELD, no LiveKit message has: LiveKit reads and ignores it, no
    answer, no echo, so it loads one direction of the relay only."""
    body = size - 1
    while len(len_field(UNKNOWN_FIELD, b"x" * body)) > size:
        body -= 1
    return len_field(UNKNOWN_FIELD, b"x" * body)


def is_pong(frame):
    try:
        return any(n == RESPONSE_PONG_RESP for n, _, _ in fields(frame))
    except ProtocolError:
        return False


# --------------------------------------------------------------- websocket --

class Conn:
    """One signalling WebSocket. `open` does the TCP connect and the upgrade;
    frames are then read with `next_frame` (blocking, with a deadline) or,
    once the socket is non-blocking and watched by a selector, with `pump`."""

    def __init__(self, host, port, path, timeout, headers=(), source=None):
        """HEADERS: (name, value) pairs sent after the upgrade's own; SOURCE:
        the local address to connect from (another loopback one, say)."""
        self.started = time.perf_counter()
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.closed = False  # a close frame came
        self.fragments = None
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                           + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode())
        while b"\r\n\r\n" not in self.buf:
            self.recv()
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        self.buf = bytearray(rest)
        lines = head.decode("latin-1").split("\r\n")
        if not lines[0].startswith("HTTP/1.1 101"):
            raise ProtocolError(f"upgrade answered {lines[0]!r}")
        accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
        headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
        if headers.get("sec-websocket-accept") != accept:
            raise ProtocolError("wrong Sec-WebSocket-Accept")

    def recv(self):
        data = self.sock.recv(65536)
        if not data:
            raise ProtocolError("connection closed")
        self.buf += data

    def send(self, opcode, payload=b""):
        """One masked frame (a client's frames are masked, RFC 6455 §5.3)."""
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        # XOR as one big integer: fast enough for a message of megabytes.
        key = (mask * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
        self.sock.sendall(head + mask + masked)

    def send_binary(self, payload):
        self.send(OP_BINARY, payload)

    def parse(self):
        """The next complete frame in the buffer as (opcode, payload), or None."""
        b = self.buf
        if len(b) < 2:
            return None
        n, at = b[1] & 0x7F, 2
        if n == 126:
            if len(b) < 4:
                return None
            n, at = struct.unpack("!H", b[2:4])[0], 4
        elif n == 127:
            if len(b) < 10:
                return None
            n, at = struct.unpack("!Q", b[2:10])[0], 10
        if b[1] & 0x80:
            raise ProtocolError("a server frame is masked")
        if len(b) < at + n:
            return None
        fin, opcode, payload = b[0] & 0x80, b[0] & 0x0F, bytes(b[at:at + n])
        del b[:at + n]
        return fin, opcode, payload

    def message(self):
        """The next whole message from the buffer as (opcode, payload), or None.
        Pings are answered here and never returned."""
        while (frame := self.parse()) is not None:
            fin, opcode, payload = frame
            if opcode == OP_PING:
                self.send(OP_PONG, payload)
                continue
            if opcode == OP_PONG:
                continue
            if opcode == OP_CLOSE:
                self.closed = True
                return opcode, payload
            if opcode == OP_CONT:
                if self.fragments is None:
                    raise ProtocolError("continuation without a start")
                self.fragments[1] += payload
            else:
                self.fragments = [opcode, bytearray(payload)]
            if fin:
                opcode, payload = self.fragments[0], bytes(self.fragments[1])
                self.fragments = None
                return opcode, payload
        return None

    def next_message(self, deadline):
        while (m := self.message()) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message before the deadline")
            self.sock.settimeout(left)
            self.recv()
        return m

    def leave(self, deadline):
        """LeaveRequest, then a close frame; waits (until DEADLINE) for the
        server's close frame or the end of the connection, then closes the socket."""
        try:
            self.send_binary(leave_request())
            self.send(OP_CLOSE, struct.pack("!H", 1000))
            while not self.closed:
                self.next_message(deadline)
        except (OSError, ProtocolError, TimeoutError):
            pass
        finally:
            self.sock.close()


def join(host, port, access_token, timeout=10, headers=(), source=None):
    """Opens a signalling connection with ACCESS_TOKEN (HEADERS and SOURCE as
    Conn's) and reads up to its first binary message. Returns (conn, seconds from the start of the TCP connect to
    that message, the ICE server URLs of the join). Raises ProtocolError if the
    first binary message is no join."""
    query = urllib.parse.urlencode({"access_token": access_token, "auto_subscribe": "1", "sdk": "js",
                                    "version": "2.21.0", "protocol": "16"})
    conn, elapsed, body = join_on(host, port, f"/rtc?{query}", timeout, headers, source)
    return conn, elapsed, ice_urls(body)


def join_on(host, port, path, timeout=10, headers=(), source=None):
    """Like join, on PATH (the query written as given); returns (conn,
    seconds to the join, the JoinResponse bytes)."""
    deadline = time.monotonic() + timeout
    conn = Conn(host, port, path, timeout, headers, source)
    try:
        while True:
            opcode, payload = conn.next_message(deadline)
            if opcode == OP_CLOSE:
                raise ProtocolError(f"closed before the join: {payload[2:]!r}")
            if opcode == OP_BINARY:
                break
        elapsed = time.perf_counter() - conn.started
        body = join_of(payload)
        if body is None:
            raise ProtocolError(f"first binary message is no join: {payload[:40].hex()}")
        return conn, elapsed, body
    except BaseException:
        conn.sock.close()
        raise
