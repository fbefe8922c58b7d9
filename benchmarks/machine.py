"""One line describing where a benchmark ran, stored in every results JSON, and the tag in its file name."""

from __future__ import annotations

import os
import platform

import torch

from gzmorph.precision import cpu_kind


def describe_machine(device: str = "cpu") -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cpu_isa": cpu_kind(), "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__,
            "python": platform.python_version(), "device": device}
    # "AMD EPYC" names Zen 3, 4 and 5 alike, and Zen 4 and 5 share the ISA tag: the family and model tell them apart
    # (AMD family 25 = Zen 3/4, 26 = Zen 5).
    try:
        with open("/proc/cpuinfo") as f:
            pairs = (line.split(":", 1) for line in f if ":" in line)
            fields = {k.strip(): v.strip() for k, v in pairs if k.strip() in ("cpu family", "model")}
        info["cpu_family"], info["cpu_model"] = int(fields["cpu family"]), int(fields["model"])
    except (OSError, KeyError, ValueError):
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def machine_tag(info: dict) -> str:
    """e.g. ``cpu2-avx512bf16``; results measured before the ISA was recorded (all on Zen 4) carry that tag."""
    if "gpu" in info:
        return info["gpu"].replace(" ", "-").lower()
    return f"cpu{info['cores']}-{info.get('cpu_isa', 'avx512bf16')}"
