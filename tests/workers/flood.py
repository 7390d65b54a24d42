#!/usr/bin/env python3
"""A peer that floods a broker's worker endpoint until it is killed.

    flood.py ENDPOINT

It sends one heartbeat and waits for the broker's answer (an unknown worker gets an error), prints
``flooding``, then sends ``goodbye`` messages as fast as it can. The broker answers those with
nothing, so its worker socket thread spends its time forwarding them to the core. A separate
process, so the flood does not compete with the broker's threads for one interpreter's GIL.

It never outlives the test that started it by much: it exits once its parent is gone, or after
30 s whatever happens.
"""

import os
import sys
import time

import zmq

from remus import protocol as p

parent = os.getppid()
deadline = time.monotonic() + 30
ctx = zmq.Context()
sock = ctx.socket(zmq.DEALER)
sock.linger = 0
sock.sndtimeo = 100  # so that a broker that stopped reading cannot block it for good
sock.connect(sys.argv[1])
sock.send_multipart(p.encode(p.Heartbeat()))
if not sock.poll(10_000):
    sys.exit("flood.py: the broker never answered")
sock.recv_multipart()
print("flooding", flush=True)
goodbye = p.encode(p.Goodbye())
while time.monotonic() < deadline and os.getppid() == parent:
    for _ in range(1000):
        try:
            sock.send_multipart(goodbye)
        except zmq.Again:
            break  # the broker has stopped reading: look at the clock and the parent again
sock.close()
ctx.term()
