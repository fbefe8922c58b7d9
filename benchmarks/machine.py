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
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def machine_tag(info: dict) -> str:
    """e.g. ``cpu2-avx512bf16``; results measured before the ISA was recorded (all on Zen 4) carry that tag."""
    if "gpu" in info:
        return info["gpu"].replace(" ", "-").lower()
    return f"cpu{info['cores']}-{info.get('cpu_isa', 'avx512bf16')}"
