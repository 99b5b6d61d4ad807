"""Where and how a model runs: device, precision and threads, decided in one place."""

from __future__ import annotations

from typing import Any

from encoders.common.errors import InvalidInput, ModelUnavailable

PRECISIONS = ("fp32", "bf16", "fp16")


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def pick_device(device: str, cuda: bool | None = None) -> str:
    """ "auto" -> "cuda" when a GPU is visible, else "cpu"; a GPU asked for but absent fails.
    `cuda`: whether a GPU is visible (asked of torch when None)."""
    if device != "auto" and device != "cpu" and not device.startswith("cuda"):
        raise InvalidInput(f"device must be auto, cpu, cuda or cuda:N, not {device!r}", field="device")
    if device == "cpu":
        return device
    cuda = cuda_available() if cuda is None else cuda
    if device == "auto":
        return "cuda" if cuda else "cpu"
    if not cuda:
        raise ModelUnavailable(f"device {device!r} was asked for but no CUDA device is visible; use device 'cpu'")
    return device


def pick_dtype(precision: str, device: str, *, field: str = "precision") -> Any:
    """The torch dtype for "fp32" | "bf16" | "fp16"; fp16 needs a GPU. `field`: the option's
    name in the caller's settings, for the error."""
    import torch

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise InvalidInput(f"{field} must be one of {', '.join(PRECISIONS)}, not {precision!r}", field=field)
    if precision == "fp16" and device == "cpu":
        raise ModelUnavailable(f"{field} fp16 needs a GPU; use fp32 or bf16 on CPU")
    return dtypes[precision]


def set_threads(threads: int) -> None:
    """torch's intra-op threads for this process; 0 keeps torch's default (one per core)."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
