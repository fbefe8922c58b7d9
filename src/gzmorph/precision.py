"""Where and how a model runs: the device, the number format of its arithmetic, and the memory layout of its tensors.

One policy for every command that runs a model (train, evaluate, predict, serve, plot --gallery, the benchmarks):

* ``fp32``: plain float32, tensors in PyTorch's default layout (NCHW). Bitwise what gzmorph 0.1 did on CPUs.
* ``bf16``: autocast to bfloat16 for the convolutions and matrix products, with tensors in channels-last (NHWC)
  layout. Measured on a 2-core AMD EPYC (Zen 4, AVX-512 BF16), one gznet train step ran 2.2-2.5x faster than fp32
  NCHW and inference 3-4x (``benchmarks/throughput.py``); oneDNN's bf16 kernels want NHWC, and channels-last alone
  is also faster there, which is why the two go together. Only the arithmetic of autocast's op list is bf16: the
  parameters, the optimizer state, BatchNorm's running statistics, the weight average, the loss and every weight
  file stay float32.
* ``auto`` (the default): bf16 where the hardware does it natively -- a CUDA GPU that supports bf16, or a CPU whose
  flags show AVX-512 BF16 or AMX -- and fp32 elsewhere. A CPU without native bf16 emulates it slowly (10x slower
  than fp32 on a Zen 3 EPYC, AVX2 only), so it keeps fp32. Detected from the CPU's flags, never assumed. There a
  model that only predicts runs fp32 channels-last with BatchNorm folded into its convolutions: measured on that
  Zen 3, gznet's forward ran 1.9-2.0x faster than fp32 NCHW, outputs within 6e-8. Training stays NCHW: a run
  saves its resolved precision and must resume in the same arithmetic, and ``fp32`` names 0.1's exact path.

``torch.compile`` is not used: on the CPU it took 66 s to compile gznet's train step and then ran no faster than
eager bf16 (286 vs 302 img/s, measured side by side), so it never pays back within a 15-minute run.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass
from typing import ContextManager

import torch

from .config import PRECISIONS
from .errors import BadArgument

log = logging.getLogger("gzmorph")

# CPU flags (Linux /proc/cpuinfo names) that mean the CPU computes bf16 dot products in hardware.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def pick_device(name: str) -> torch.device:
    """``auto`` = the CUDA GPU if there is one, else the CPU; asking for CUDA without one is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BadArgument(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise BadArgument(f"--device {name!r}: not a device name; use auto, cpu, cuda or cuda:N") from None


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (empty where /proc/cpuinfo does not exist)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


# The vector extension that decides how fast (and, through oneDNN's kernel choice, how bitwise) a CPU runs these
# models, best first. One "AMD EPYC" name covers Zen 3 (AVX2 only, bf16 emulated) and Zen 4 (AVX-512 BF16).
CPU_KINDS = (("amx_bf16", "amx"), ("avx512_bf16", "avx512bf16"), ("avx512f", "avx512"), ("avx2", "avx2"))


def cpu_kind() -> str:
    """``amx``, ``avx512bf16``, ``avx512``, ``avx2`` or ``generic``: the best of :data:`CPU_KINDS` the CPU has."""
    flags = cpu_flags()
    return next((kind for flag, kind in CPU_KINDS if flag in flags), "generic")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` does bf16 arithmetic in hardware (not emulated in fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS)
    return False


def check_precision(name: str) -> None:
    """Called before any work, so a wrong ``--precision`` fails at once."""
    if name not in PRECISIONS:
        raise BadArgument(f"--precision must be one of {', '.join(PRECISIONS)}, got {name!r}")


@dataclass(frozen=True)
class Policy:
    """How a model runs on ``device``: ``name`` is "fp32" or "bf16" (never "auto": that is resolved)."""

    device: torch.device
    name: str
    predict_only: bool = False  # a model that is never trained: fp32 may take the faster channels-last layout too

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.name == "bf16" else torch.float32

    @property
    def channels_last(self) -> bool:
        # NHWC with bf16 everywhere, and on CUDA always (tensor cores want it; gzmorph 0.1 did so too). fp32 on a
        # CPU keeps NCHW, so that an fp32 CPU run is bitwise what it was before the policy existed.
        return self.name == "bf16" or self.device.type == "cuda" or self.predict_only

    @property
    def fold_batchnorm(self) -> bool:
        """Whether BatchNorm is folded into the convolutions before predicting: wherever the exact fp32 path of a
        trained run is not asked for (bf16 rounds far more than folding changes)."""
        return self.name == "bf16" or self.predict_only

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> ContextManager:
        if self.name == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move ``model`` to the device and layout (in place; returned for chaining). Parameters stay float32."""
        return model.to(self.device, memory_format=self.memory_format)

    def describe(self) -> dict:
        """What was used, for config.json and predict's .json."""
        out = {"device": str(self.device), "precision": self.name, "channels_last": self.channels_last,
               "native_bf16": native_bf16(self.device)}
        if self.device.type == "cuda":
            out["gpu"] = torch.cuda.get_device_name(self.device)
        return out


def resolve(requested: str, device: torch.device, *, predict_only: bool = False) -> Policy:
    """The policy for ``requested`` (auto | fp32 | bf16) on ``device``; ``predict_only`` for a model that will not
    be trained, where ``auto`` on a CPU without native bf16 means fp32 channels-last (see the module's notes)."""
    check_precision(requested)
    if requested == "auto":
        if native_bf16(device):
            return Policy(device, "bf16")
        return Policy(device, "fp32", predict_only=predict_only and device.type == "cpu")
    if requested == "bf16" and not native_bf16(device):
        log.warning("--precision bf16 on %s, which has no native bf16 arithmetic: it is emulated and may be slower "
                    "than fp32", device)
    return Policy(device, requested)
