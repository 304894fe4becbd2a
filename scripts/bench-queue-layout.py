#!/usr/bin/env python3
"""What creating flows' queues costs nats-server, by queue layout (not a test; BENCHMARKS.md,
"Why nats-server's share grows faster than the flows").

    pip install nats-py
    scripts/bench-queue-layout.py per-flow 8000 2000 [accounts] [nats-server]
    scripts/bench-queue-layout.py per-namespace 8000 2000

Creates, 32 at a time, what the operator creates per flow - the flow's stream (16 MiB, 2 min
dedupe window), its dead-letter stream and its durable pull consumer - against a private
nats-server with JetStream (store on /dev/shm, so that file-system costs do not blur the
server's own), and prints nats-server's CPU-seconds per step of flows. `per-namespace` makes one
dead-letter stream per namespace instead of one per flow; `accounts` spreads the flows over that
many NATS accounts (one namespace each). A Python client keeps this independent of the code it
measures for; nats-server's figures do not depend on the client's speed.
"""
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, DiscardPolicy, StorageType, StreamConfig


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().split(")")[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main():
    layout, flows, step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    accounts = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    binary = sys.argv[5] if len(sys.argv) > 5 else os.path.expanduser("~/.cache/flowplane/bin/nats-server")
    if layout not in ("per-flow", "per-namespace"):
        sys.exit("layout: per-flow or per-namespace")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = f"/dev/shm/flowplane-queue-layout-{os.getpid()}"
    users = "".join(f"  A{a}: {{ jetstream: enabled, users: [{{user: u{a}, password: p}}] }}\n" for a in range(accounts))
    with open(f"{store}.conf", "w") as conf:
        conf.write(f"listen: 127.0.0.1:{port}\njetstream {{ store_dir: {store}, max_file_store: 1TB }}\naccounts {{\n{users}}}\n")
    server = subprocess.Popen([binary, "-c", f"{store}.conf"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)
        clients = [await nats.connect(f"nats://u{a}:p@127.0.0.1:{port}", allow_reconnect=False) for a in range(accounts)]
        streams = [client.jetstream() for client in clients]
        namespace_dead_letters = set()

        async def make_queue(i):
            js, ns = streams[i % accounts], f"ns{i % accounts}"
            name = f"FP_{ns}_flow-{i:05d}"
            await js.add_stream(StreamConfig(name=name, subjects=[f"fp.{ns}.flow-{i:05d}.>"], storage=StorageType.FILE,
                                             max_bytes=16 << 20, duplicate_window=120, max_age=7 * 86400))
            if layout == "per-flow":
                await js.add_stream(StreamConfig(name=f"{name}_DLQ", subjects=[f"fpdlq.{ns}.flow-{i:05d}"], storage=StorageType.FILE,
                                                 max_bytes=16 << 20, discard=DiscardPolicy.NEW, max_age=14 * 86400))
            elif ns not in namespace_dead_letters:
                namespace_dead_letters.add(ns)
                await js.add_stream(StreamConfig(name=f"FP_{ns}_DLQ", subjects=[f"fpdlq.{ns}.>"], storage=StorageType.FILE,
                                                 max_bytes=1 << 30, discard=DiscardPolicy.NEW, max_age=14 * 86400))
            await js.add_consumer(name, ConsumerConfig(durable_name="workers", ack_policy=AckPolicy.EXPLICIT,
                                                       deliver_policy=DeliverPolicy.ALL, ack_wait=30))

        total = 0.0
        for start in range(0, flows, step):
            before, started = cpu_seconds(server.pid), time.time()
            limit = asyncio.Semaphore(32)

            async def bounded(i):
                async with limit:
                    await make_queue(i)

            await asyncio.gather(*[bounded(i) for i in range(start, min(start + step, flows))])
            spent = cpu_seconds(server.pid) - before
            total += spent
            print(f"{layout}, {accounts} account(s), flows {start}-{start + step}: nats-server {spent:.2f} CPU-s ({time.time() - started:.2f} s)", flush=True)
        print(f"{layout}, {accounts} account(s): {flows} flows, nats-server {total:.1f} CPU-s in all", flush=True)
        for client in clients:
            await client.close()
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(store, ignore_errors=True)
        os.remove(f"{store}.conf")


asyncio.run(main())
