"""A pretend internet host for tests/test_netns.py: listens on UDP 53 and TCP 80/443 of every
address and counts what arrives, printing ``{"udp": n, "tcp": n}`` on SIGTERM."""

from __future__ import annotations

import json
import selectors
import signal
import socket
import sys

counts = {"udp": 0, "tcp": 0}
selector = selectors.DefaultSelector()
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("0.0.0.0", 53))
selector.register(udp, selectors.EVENT_READ, "udp")
for port in (80, 443):
    tcp = socket.create_server(("0.0.0.0", port))
    selector.register(tcp, selectors.EVENT_READ, "tcp")


def done(*_: object) -> None:
    print(json.dumps(counts), flush=True)
    sys.exit(0)


signal.signal(signal.SIGTERM, done)
print("listening", flush=True)
while True:
    for key, _ in selector.select():
        if key.data == "udp":
            key.fileobj.recvfrom(65535)
        else:
            key.fileobj.accept()[0].close()
        counts[key.data] += 1
