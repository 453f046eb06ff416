"""The floor under a fan-out: what the kernel alone takes to send one frame to N viewers.

The relay bench's probe (bench/probe.py) times, inside the server, the fan-out of each
frame. At 100 viewers a 25-packet VP8 keyframe took 17-26 ms of CPU there. This bench
asks how much of that any server would pay on the same machine: it sends the same
number of plain UDP datagrams of an RTP packet's size over loopback, one socket per
viewer as each viewer's ICE pair has, with no encryption, no packet assembly and no
event loop. It sends them two ways, each timed per frame and given as a median:

- one `sendto` per packet, as Stage's outlet does;
- one `sendmmsg(2)` per viewer and frame (libc through ctypes), the batching a C SFU
  can use.

The receiving sockets are drained between frames, outside the timing, so the kernel's
work for them (over loopback, the sender's system call also delivers the datagram)
is part of the time, as it is in the relay bench.

    .venv/bin/python -m bench.sendfloor                  # 100 viewers, keyframe and delta
    .venv/bin/python -m bench.sendfloor --viewers 10 50 100 200 --frames 50

It prints, per viewer count and frame size, the median time per frame and per packet,
and the sendmmsg time as a ratio to sendto's; it writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import socket
import statistics
import time
from pathlib import Path

from .machine import describe

RESULTS = Path(__file__).parent / "results"
PACKET_BYTES = 1200
# Packets per frame of the relay bench's 640x480 VP8 stream at about 1 Mb/s.
FRAMES = {"keyframe": 25, "delta frame": 3}


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]


class _Address(ctypes.Structure):
    _fields_ = [
        ("family", ctypes.c_ushort),
        ("port", ctypes.c_uint16),
        ("host", ctypes.c_uint32),
        ("zero", ctypes.c_char * 8),
    ]


class _MessageHeader(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("name_length", ctypes.c_uint32),
        ("iov", ctypes.POINTER(_IoVec)),
        ("iov_length", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("control_length", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class _Message(ctypes.Structure):
    _fields_ = [("header", _MessageHeader), ("sent", ctypes.c_uint)]


class Viewers:
    """N receiving sockets on 127.0.0.1 and, for each, a socket that sends to it."""

    def __init__(self, count: int) -> None:
        self.inboxes = []
        self.outboxes = []
        for _ in range(count):
            inbox = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            inbox.bind(("127.0.0.1", 0))
            inbox.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            inbox.setblocking(False)
            outbox = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            outbox.bind(("127.0.0.1", 0))
            self.inboxes.append(inbox)
            self.outboxes.append(outbox)
        self.addresses = [inbox.getsockname() for inbox in self.inboxes]

    def drain(self) -> int:
        received = 0
        for inbox in self.inboxes:
            try:
                while True:
                    inbox.recv(2048)
                    received += 1
            except BlockingIOError:
                pass
        return received

    def close(self) -> None:
        for sock in self.inboxes + self.outboxes:
            sock.close()


def time_sendto(viewers: Viewers, packets: int, frames: int) -> list[float]:
    payload = bytes(PACKET_BYTES)
    times = []
    for _ in range(frames):
        started = time.perf_counter()
        for outbox, address in zip(viewers.outboxes, viewers.addresses):
            for _ in range(packets):
                outbox.sendto(payload, address)
        times.append(time.perf_counter() - started)
        _check(viewers.drain(), packets * len(viewers.outboxes))
    return times


def time_sendmmsg(viewers: Viewers, packets: int, frames: int) -> list[float]:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    payload = ctypes.create_string_buffer(PACKET_BYTES)
    vector = _IoVec(ctypes.cast(payload, ctypes.c_void_p), PACKET_BYTES)
    batches = []
    for outbox, (host, port) in zip(viewers.outboxes, viewers.addresses):
        address = _Address(
            socket.AF_INET,
            socket.htons(port),
            int.from_bytes(socket.inet_aton(host), "little"),
        )
        messages = (_Message * packets)()
        for message in messages:
            message.header.name = ctypes.cast(ctypes.pointer(address), ctypes.c_void_p)
            message.header.name_length = ctypes.sizeof(address)
            message.header.iov = ctypes.pointer(vector)
            message.header.iov_length = 1
        batches.append((outbox.fileno(), messages, address))
    times = []
    for _ in range(frames):
        started = time.perf_counter()
        for descriptor, messages, _ in batches:
            sent = libc.sendmmsg(descriptor, messages, packets, 0)
            if sent != packets:
                raise OSError(ctypes.get_errno(), "sendmmsg sent %d" % sent)
        times.append(time.perf_counter() - started)
        _check(viewers.drain(), packets * len(batches))
    return times


def _check(received: int, sent: int) -> None:
    # Loopback drops nothing while the receive buffers have room; if it did, the
    # kernel would have done less work than a real fan-out.
    if received != sent:
        raise RuntimeError(f"{sent - received} of {sent} datagrams were dropped")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, nargs="+", default=[100])
    parser.add_argument(
        "--frames", type=int, default=30, help="frames timed per case (default 30)"
    )
    arguments = parser.parse_args()
    if not 1 <= arguments.frames <= 1000 or not all(
        1 <= n <= 500 for n in arguments.viewers
    ):
        parser.error("--frames takes 1 to 1000 and --viewers 1 to 500")
    rows = []
    print(f"{'viewers':>7} {'frame':>12} {'sendto ms':>10} {'us/packet':>10} "
          f"{'sendmmsg ms':>12} {'us/packet':>10} {'ratio':>6}")
    for count in arguments.viewers:
        viewers = Viewers(count)
        try:
            for name, packets in FRAMES.items():
                plain = statistics.median(time_sendto(viewers, packets, arguments.frames))
                batched = statistics.median(
                    time_sendmmsg(viewers, packets, arguments.frames)
                )
                sent = packets * count
                rows.append(
                    {
                        "viewers": count,
                        "frame": name,
                        "packets": sent,
                        "sendto_ms": plain * 1e3,
                        "sendmmsg_ms": batched * 1e3,
                    }
                )
                print(f"{count:>7} {name:>12} {plain * 1e3:>10.2f} "
                      f"{plain / sent * 1e6:>10.2f} {batched * 1e3:>12.2f} "
                      f"{batched / sent * 1e6:>10.2f} {batched / plain:>6.2f}")
        finally:
            viewers.close()
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    path = RESULTS / f"sendfloor-{stamp}.json"
    path.write_text(json.dumps({"machine": describe(), "rows": rows}, indent=2))
    print(f"written {path}")


if __name__ == "__main__":
    main()
