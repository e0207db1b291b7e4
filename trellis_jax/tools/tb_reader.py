"""Read scalar summaries back from TensorBoard event files (no TensorFlow/TensorBoard needed).

Event files are TFRecord streams: [uint64 length][uint32 crc][bytes][uint32 crc] per record, each an
`Event` protobuf (tensorboardX ships the generated classes).
"""
from __future__ import annotations

import struct
from pathlib import Path


def iter_events(path: str | Path):
    from tensorboardX.proto.event_pb2 import Event

    data = Path(path).read_bytes()
    pos = 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        start = pos + 12
        end = start + length
        if end + 4 > len(data):  # a record still being written (or a truncated file): stop cleanly
            break
        yield Event.FromString(data[start:end])
        pos = end + 4


def read_scalars(logdir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """All scalars under `logdir` (recursively): tag -> [(step, value)] sorted by step."""
    out: dict[str, list[tuple[int, float]]] = {}
    for f in sorted(Path(logdir).rglob("events.out.tfevents.*")):
        for ev in iter_events(f):
            for v in ev.summary.value:
                if v.HasField("simple_value"):
                    out.setdefault(v.tag, []).append((int(ev.step), float(v.simple_value)))
                elif v.HasField("tensor") and v.tensor.float_val:
                    out.setdefault(v.tag, []).append((int(ev.step), float(v.tensor.float_val[0])))
    return {k: sorted(v) for k, v in out.items()}
