#!/usr/bin/env python3
"""A TURN client for the "peer sends first" case, which turnutils_uclient
cannot do: Allocate (long-term credentials), CreatePermission for PEER_IP,
print the relayed address, then wait for a Data indication from the peer.

usage: turn_peer_first.py SERVER_IP PORT USER PASSWORD PEER_IP WAIT_SECONDS
prints "relayed IP:PORT" (flushed) after allocating; then "data FROM_IP:PORT
PAYLOAD" for the first Data indication, or "no data" and exit 1 on timeout.
"""
import hashlib
import hmac
import os
import socket
import struct
import sys
import zlib

COOKIE = 0x2112A442


def attr(kind, value):
    pad = (4 - len(value) % 4) % 4
    return struct.pack(">HH", kind, len(value)) + value + b"\0" * pad


def message(kind, tid, attrs, key=None):
    body = b"".join(attrs)
    if key is not None:
        # MESSAGE-INTEGRITY covers the header with the length including itself.
        head = struct.pack(">HHI", kind, len(body) + 24, COOKIE) + tid
        body += attr(0x0008, hmac.new(key, head + body, hashlib.sha1).digest())
    head = struct.pack(">HHI", kind, len(body) + 8, COOKIE) + tid
    crc = zlib.crc32(head + body) ^ 0x5354554E
    body += attr(0x8028, struct.pack(">I", crc))
    return struct.pack(">HHI", kind, len(body), COOKIE) + tid + body


def parse(data):
    kind, length = struct.unpack(">HH", data[:4])
    attrs, i = {}, 20
    while i + 4 <= 20 + length:
        t, n = struct.unpack(">HH", data[i : i + 4])
        attrs.setdefault(t, data[i + 4 : i + 4 + n])
        i += 4 + n + (4 - n % 4) % 4
    return kind, attrs


def xor_address(value):
    port = struct.unpack(">H", value[2:4])[0] ^ (COOKIE >> 16)
    ip = bytes(a ^ b for a, b in zip(value[4:8], struct.pack(">I", COOKIE)))
    return socket.inet_ntoa(ip), port


def request(sock, kind, attrs, key=None):
    tid = os.urandom(12)
    sock.send(message(kind, tid, attrs, key))
    return parse(sock.recv(2048))


def main():
    server, port, user, password, peer, wait = sys.argv[1:7]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(5)
    sock.connect((server, int(port)))
    udp = attr(0x0019, bytes([17, 0, 0, 0]))  # REQUESTED-TRANSPORT: UDP
    kind, a = request(sock, 0x0003, [udp])
    realm, nonce = a[0x0014], a[0x0015]
    key = hashlib.md5(f"{user}:{realm.decode()}:{password}".encode()).digest()
    auth = [attr(0x0006, user.encode()), attr(0x0014, realm), attr(0x0015, nonce)]
    kind, a = request(sock, 0x0003, [udp] + auth, key)
    if kind != 0x0103:
        sys.exit(f"allocate failed: type {kind:#06x} {a.get(0x0009)}")
    relayed = xor_address(a[0x0016])
    # XOR-PEER-ADDRESS, IPv4; the port does not matter for a permission.
    peer_address = b"\0\x01" + struct.pack(">H", 0 ^ (COOKIE >> 16)) + bytes(
        a ^ b for a, b in zip(socket.inet_aton(peer), struct.pack(">I", COOKIE))
    )
    kind, a = request(sock, 0x0008, [attr(0x0012, peer_address)] + auth, key)
    if kind != 0x0108:
        sys.exit(f"create permission failed: type {kind:#06x} {a.get(0x0009)}")
    print(f"relayed {relayed[0]}:{relayed[1]}", flush=True)
    sock.settimeout(float(wait))
    try:
        while True:
            kind, a = parse(sock.recv(2048))
            if kind == 0x0017:  # Data indication
                source = xor_address(a[0x0012])
                print(f"data {source[0]}:{source[1]} {a[0x0013].decode(errors='replace')}", flush=True)
                return
    except socket.timeout:
        print("no data", flush=True)
        sys.exit(1)


main()
