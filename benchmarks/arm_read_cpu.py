"""The grader's CPU per ARM read: `ArmReader.get` against a local Azure (in this process, its
own threads), measured with the reading thread's own CPU clock (`time.thread_time`), so the
local Azure's work is not counted.

    python benchmarks/arm_read_cpu.py [--reads 300] [--threads 1] [--profile FILE]

Prints one JSON line: CPU milliseconds per read of the engine's reader (`arm_reader_ms`) and,
for comparison, of a bare urllib3 GET through the same proxy plus `json.loads`
(`bare_urllib3_ms`). With `--threads K`, K threads read at once (the CPU is summed over them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _per_read(fn, reads: int, threads: int) -> float:
    for _ in range(20):  # warm: connections, token, caches
        fn()
    if threads == 0:  # in this thread (for a profiler of this thread)
        start = time.thread_time()
        for _ in range(reads):
            fn()
        return 1000 * (time.thread_time() - start) / reads
    spent = [0.0] * threads

    def run(i: int) -> None:
        start = time.thread_time()
        for _ in range(reads // threads):
            fn()
        spent[i] = time.thread_time() - start

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return 1000 * sum(spent) / (reads // threads * threads)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reads", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", default=None)
    args = parser.parse_args()

    from azure.identity import ClientSecretCredential

    from pytest_milab.azure.clients import ArmReader, shared_transport
    from pytest_milab.emulator import LocalAzure

    with LocalAzure() as azure:
        os.environ.update(azure.env)
        gr = azure.grader
        credential = ClientSecretCredential(gr.tenant_id, gr.client_id, gr.client_secret)
        path = f"/subscriptions/{azure.subscription_id}"
        arm = ArmReader(credential, 30, shared_transport(16))

        def reader() -> None:
            status, _ = arm.get(path, "2022-12-01")
            assert status == 200, status

        import urllib3

        token = credential.get_token("https://management.azure.com/.default").token
        proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
        ca = os.environ.get("REQUESTS_CA_BUNDLE")
        pool = (urllib3.ProxyManager(proxy, ca_certs=ca, maxsize=16) if proxy
                else urllib3.PoolManager(ca_certs=ca, maxsize=16))
        url = f"https://management.azure.com{path}?api-version=2022-12-01"
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}

        def bare() -> None:
            r = pool.request("GET", url, headers=headers)
            assert r.status == 200
            json.loads(r.data)

        result = {"reads": args.reads, "threads": args.threads}
        if args.profile:
            import cProfile

            profiler = cProfile.Profile(time.thread_time)  # CPU, not waits
            profiler.enable()
            result["arm_reader_ms"] = round(_per_read(reader, args.reads, 0), 3)
            profiler.disable()
            profiler.dump_stats(args.profile)
        else:
            result["arm_reader_ms"] = round(_per_read(reader, args.reads, args.threads), 3)
            result["bare_urllib3_ms"] = round(_per_read(bare, args.reads, args.threads), 3)
            result["arm_reader_ms_again"] = round(_per_read(reader, args.reads, args.threads), 3)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
