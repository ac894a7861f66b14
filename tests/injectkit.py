"""An attacker on the path between a board and its broker: before every command the broker
delivers, it slips in a forged copy (same topic, same payload but for its MAC tag, QoS 0), so the
device sees a bad-MAC message carrying the real command's cti just before the real one."""
from __future__ import annotations

import socket

from host_tools.sim.netfault import FaultyProxy


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packets(buf: bytearray):
    """Split whole MQTT packets off the front of buf: yields (first byte, body)."""
    while len(buf) >= 2:
        n, shift, i = 0, 0, 1
        while True:
            if i >= len(buf):
                return
            c = buf[i]
            n |= (c & 0x7F) << shift
            i += 1
            if not c & 0x80:
                break
            shift += 7
        if len(buf) < i + n:
            return
        first, body = buf[0], bytes(buf[i:i + n])
        del buf[:i + n]
        yield first, body


class ForgingProxy(FaultyProxy):
    def __init__(self, target_port: int):
        super().__init__(target_port)
        self.forged = 0
        self._bufs: dict[socket.socket, bytearray] = {}

    def _forward(self, src, dst, data):
        if src in self._born:  # device -> broker: untouched
            dst.sendall(data)
            return
        buf = self._bufs.setdefault(src, bytearray())
        buf += data
        out = bytearray()
        for first, body in _packets(buf):
            if first >> 4 == 3:  # PUBLISH
                tlen = int.from_bytes(body[:2], "big")
                topic = body[2:2 + tlen]
                qos = (first >> 1) & 3
                payload = body[2 + tlen + (2 if qos else 0):]
                if topic.endswith(b"/dn/cmd") and payload:
                    forged = payload[:-1] + bytes([payload[-1] ^ 1])  # the tag's last byte
                    fbody = body[:2 + tlen] + forged
                    out += bytes([0x30]) + _varint(len(fbody)) + fbody
                    self.forged += 1
            out += bytes([first]) + _varint(len(body)) + body
        if out:
            dst.sendall(bytes(out))
