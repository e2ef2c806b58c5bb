"""A cluster of worker processes on this machine, for tests, benchmarks and trying
multi-worker training locally (docs/multi_worker.md)."""

import json
import socket


def free_ports(n):
  """`n` distinct TCP ports free on 127.0.0.1 now (the OS picks them)."""
  sockets = [socket.socket() for _ in range(n)]
  try:
    for s in sockets:
      s.bind(("127.0.0.1", 0))
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


def tf_config(ports, task_index):
  """TF_CONFIG (a JSON string) of worker `task_index` of 127.0.0.1 workers on `ports`."""
  return json.dumps({"cluster": {"worker": [f"127.0.0.1:{int(p)}" for p in ports]},
                     "task": {"type": "worker", "index": int(task_index)}})
