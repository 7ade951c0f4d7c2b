"""Local Azure: start-to-ready time and the latency of an ARM GET through the proxy.

    python benchmarks/emulator_latency.py [--gets 300] [--starts 5]

Prints one JSON line. Aims (issue 2): ready in under 1.5 s, under 5 ms per GET.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gets", type=int, default=300)
    parser.add_argument("--starts", type=int, default=5)
    args = parser.parse_args()

    from pytest_milab.emulator import LocalAzure

    starts = []
    for _ in range(args.starts):
        t0 = time.perf_counter()
        azure = LocalAzure().start()
        starts.append(time.perf_counter() - t0)
        azure.stop()

    with LocalAzure() as azure, azure.environment():
        from azure.identity import ClientSecretCredential
        try:  # azure-mgmt-resource 24+ moved it into a subpackage
            from azure.mgmt.resource.resources import ResourceManagementClient
        except ImportError:
            from azure.mgmt.resource import ResourceManagementClient

        op = azure.operator
        cred = ClientSecretCredential(op.tenant_id, op.client_id, op.client_secret)
        client = ResourceManagementClient(cred, azure.subscription_id)
        client.resource_groups.create_or_update("bench", {"location": "uksouth"})
        client.resource_groups.get("bench")  # warm: token, TLS, connection pool
        latencies = []
        for _ in range(args.gets):
            t0 = time.perf_counter()
            client.resource_groups.get("bench")
            latencies.append(time.perf_counter() - t0)
        # The same GET with a plain keep-alive session: the local Azure's share of the time.
        import requests

        token = cred.get_token("https://management.azure.com/.default").token
        session = requests.Session()
        url = (f"https://management.azure.com/subscriptions/{azure.subscription_id}"
               "/resourceGroups/bench?api-version=2025-04-01")
        session.get(url, headers={"Authorization": f"Bearer {token}"})
        raw = []
        for _ in range(args.gets):
            t0 = time.perf_counter()
            session.get(url, headers={"Authorization": f"Bearer {token}"})
            raw.append(time.perf_counter() - t0)
    print(json.dumps({
        "start_to_ready_s": {"median": round(statistics.median(starts), 3),
                             "max": round(max(starts), 3)},
        "arm_get_ms_raw": {"median": round(statistics.median(raw) * 1000, 2),
                           "p95": round(sorted(raw)[int(len(raw) * 0.95)] * 1000, 2)},
        "arm_get_ms_sdk": {"median": round(statistics.median(latencies) * 1000, 2),
                           "p95": round(sorted(latencies)[int(len(latencies) * 0.95)] * 1000, 2)},
        "gets": args.gets,
    }))


if __name__ == "__main__":
    main()
