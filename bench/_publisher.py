"""Publish N synthetic TaskExit events into containerd as fast as it takes them.

Run as a separate process by bench/events.py (so its CPU is not counted as
the pipeline's): grpcio with many calls in flight is several times cheaper
than a grpclib publisher.

    python bench/_publisher.py SOCKET NAMESPACE N CONTAINERS
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime

import grpc

from supervisor._proto.containerd.events import TaskExit
from supervisor._proto.containerd.services.events.v1 import PublishRequest
from supervisor._proto.google.protobuf import Any

IN_FLIGHT = 256


def main() -> None:
    socket, namespace, n, containers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    now = datetime.now(UTC)
    requests = []
    for i in range(n):
        cid = f"bench-{i % containers}"
        event = TaskExit(
            container_id=cid, id=cid, pid=100000 + i, exit_status=i % 256, exited_at=now
        )
        requests.append(
            bytes(
                PublishRequest(
                    topic="/tasks/exit",
                    event=Any(type_url="containerd.events.TaskExit", value=bytes(event)),
                )
            )
        )
    channel = grpc.insecure_channel(f"unix://{socket}")
    publish = channel.unary_unary("/containerd.services.events.v1.Events/Publish")
    metadata = (("containerd-namespace", namespace),)
    started = time.perf_counter()
    pending = []
    for request in requests:
        pending.append(publish.future(request, metadata=metadata))
        if len(pending) >= IN_FLIGHT:
            pending.pop(0).result()
    for call in pending:
        call.result()
    elapsed = time.perf_counter() - started
    print(f"published {n} in {elapsed:.2f}s", file=sys.stderr)
    channel.close()


if __name__ == "__main__":
    main()
