"""Mixed precision, decided once for both trainers: which 16-bit type, and how losses are scaled.

"mixed" means the forward and backward passes compute in a 16-bit type while the weights, the
optimizer's state and the loss stay float32 (torch.autocast; Keras's mixed dtype policy):
- on a GPU, float16 with dynamic loss scaling. The frameworks' defaults differ (PyTorch's
  GradScaler starts at 2^16, Keras's LossScaleOptimizer at 2^15), so both start at
  INITIAL_LOSS_SCALE and double it after GROWTH_STEPS finite steps, halving it (and skipping
  the step) on an overflow, as both do by default.
- on a CPU, bfloat16, which has float32's exponent range and needs no loss scaling, and only on
  a CPU with bfloat16 instructions: elsewhere each framework emulates it, and a figure would
  measure the emulation. float16 is never used on a CPU.
"""

from __future__ import annotations

from pathlib import Path

from twinbench.errors import FailedPrecondition, InvalidArgument

PRECISIONS = ("fp32", "mixed")
INITIAL_LOSS_SCALE = 2.0**15
GROWTH_STEPS = 2000  # both frameworks' default
# CPU flags (Linux's names) of the instruction sets that compute in bfloat16.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# Why a CPU without them refuses mixed precision.
NO_BF16 = (
    "mixed precision on a CPU computes in bfloat16, and this CPU has no bfloat16 instructions"
    f" ({' or '.join(BF16_CPU_FLAGS)}): emulated, it would measure the emulation; use fp32 here,"
    " or a GPU"
)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_bf16() -> bool:
    return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)


def compute_dtype(precision: str, on_gpu: bool) -> str | None:
    """The 16-bit type a job of `precision` computes in ("float16", "bfloat16"), or None for fp32.

    FailedPrecondition when the device cannot run it honestly (a CPU without bfloat16): a
    trainer refuses such a job at creation (twinbench.jobs.request.check_runnable); this is the
    last guard, where a session is made."""
    if precision in ("", "fp32"):
        return None
    if precision != "mixed":
        raise InvalidArgument(
            f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
        )
    if on_gpu:
        return "float16"
    if cpu_has_bf16():
        return "bfloat16"
    raise FailedPrecondition(NO_BF16)


def recorded(dtype: str | None) -> str:
    """What the job record says ran."""
    return f"mixed {dtype}" if dtype else "fp32"


def describe(dtype: str | None) -> str:
    """The fairness entry: what each framework was set to."""
    if dtype is None:
        return "fp32 throughout"
    if dtype == "bfloat16":
        return "mixed bfloat16 (float32 weights and loss), no loss scaling"
    return (
        f"mixed float16 (float32 weights and loss), dynamic loss scaling from 2^15, doubled after"
        f" {GROWTH_STEPS} finite steps, halved on an overflow"
    )
