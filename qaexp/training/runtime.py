"""Runtime: which device and precision a run uses, and the Accelerator built for them.

Accelerate owns devices, precision and ranks from here on; nothing else decides "GPU or not".
"""

from __future__ import annotations

import logging
import os

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DynamoBackend, TorchDynamoPlugin

from qaexp.config import Device, HardwareConfig, MixedPrecision, TrainerConfig
from qaexp.errors import QAExpError

log = logging.getLogger(__name__)


def resolve_device(cfg: HardwareConfig) -> str:
    """'cpu' or 'gpu'; hardware.device=gpu without a visible CUDA device is an error."""
    cuda = torch.cuda.is_available()
    if cfg.device == Device.gpu and not cuda:
        raise QAExpError(
            "hardware=gpu (hardware.device=gpu) but no CUDA device is visible to PyTorch "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}). Use "
            "hardware=cpu, or hardware=auto to pick the GPU only when there is one."
        )
    if cfg.device == Device.auto:
        return "gpu" if cuda else "cpu"
    return cfg.device.value


# The CPU instructions that run bf16 matmuls natively: AVX-512 BF16 (Intel Cooper Lake, AMD
# Zen 4 and later), AMX (Intel Sapphire Rapids and later), the BF16 extension on Arm. Without
# them oneDNN converts bf16 to fp32 and back around every product, which is slower than fp32.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


def cpu_bf16_instructions() -> list[str]:
    """The bf16 instruction sets of this CPU, as PyTorch detects them (cpuinfo, the same
    flags /proc/cpuinfo lists); empty when it has none."""
    capabilities = torch.cpu.get_capabilities()
    return [flag for flag in CPU_BF16_FLAGS if capabilities.get(flag) is True]


def resolve_mixed_precision(cfg: HardwareConfig, device: str) -> str:
    """'no', 'fp16' or 'bf16' for the device; an impossible request is an error.

    ``auto`` is fp32 on a CPU even where it has bf16 instructions: bf16 becomes the default there
    only once F1 is shown to stay within seed noise, a measurement still to take (docs/speed.md).
    """
    wanted = cfg.mixed_precision
    if wanted == MixedPrecision.auto:
        if device == "cpu":
            return "no"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device == "cpu" and wanted == MixedPrecision.fp16:
        raise QAExpError(
            "hardware.mixed_precision=fp16 is not available on the CPU (fp16 autocast and loss "
            "scaling need a GPU). Use hardware.mixed_precision=no, or bf16 on a CPU that "
            "supports it, or run on a GPU (hardware=gpu)."
        )
    if device == "cpu" and wanted == MixedPrecision.bf16 and not cpu_bf16_instructions():
        name = torch.cpu.get_capabilities().get("cpu_name") or "this CPU"
        raise QAExpError(
            f"hardware.mixed_precision=bf16 on the CPU needs bf16 instructions, and {name} has "
            "none: PyTorch finds neither avx512_bf16 nor amx_bf16 (nor bf16 on Arm) among its "
            "flags. Without them bf16 is emulated and slower than fp32. Use "
            "hardware.mixed_precision=no (or auto, which is fp32 on a CPU), or run on a CPU "
            "with AVX-512 BF16 or AMX (lscpu lists avx512_bf16 / amx_bf16), or on a GPU."
        )
    if device == "gpu" and wanted == MixedPrecision.bf16 and not torch.cuda.is_bf16_supported():
        raise QAExpError(
            f"hardware.mixed_precision=bf16 but this GPU ({torch.cuda.get_device_name()}) does "
            "not support bfloat16; use hardware.mixed_precision=fp16."
        )
    return wanted.value


def describe_precision(precision: str, device: torch.device) -> str:
    """The precision for the run block; bf16 on a CPU names the instructions autocast uses."""
    if precision == "bf16" and device.type == "cpu":
        return f"bf16 (CPU autocast on {', '.join(cpu_bf16_instructions())})"
    return precision


def dataloader_workers(cfg: HardwareConfig, device: str) -> int:
    """hardware.dataloader_workers, or by default none on the CPU (a worker would take a core
    from the model's maths) and up to 4 per GPU process (collating overlaps GPU compute)."""
    if cfg.dataloader_workers is not None:
        return cfg.dataloader_workers
    if device == "cpu":
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(4, (cpus or 1) // (2 * cfg.num_processes))


def loader_options(cfg: HardwareConfig, device: torch.device) -> dict:
    """DataLoader workers and pinned memory for batches that go to `device`."""
    on_gpu = device.type == "cuda"
    return {
        "num_workers": dataloader_workers(cfg, "gpu" if on_gpu else "cpu"),
        "pin_memory": on_gpu,
    }


def compile_plugin(backend: str, dynamic: bool | None) -> TorchDynamoPlugin:
    """Accelerate's torch.compile settings (``prepare`` compiles the model with them)."""
    try:
        plugin = TorchDynamoPlugin(backend=backend, dynamic=dynamic)
    except ValueError as err:
        choices = ", ".join(b.value.lower() for b in DynamoBackend if b != DynamoBackend.NO)
        raise QAExpError(
            f"trainer.compile_backend={backend} is not a torch.compile backend that Accelerate "
            f"knows; use one of: {choices} (inductor is the default and the fast one)."
        ) from err
    log.info("torch.compile: backend %s, dynamic=%s", backend, dynamic)
    return plugin


def make_accelerator(hardware: HardwareConfig, trainer: TrainerConfig) -> Accelerator:
    """The Accelerator for this hardware: precision, TF32, non-blocking copies from pinned
    memory on GPU, gradient accumulation, and torch.compile (applied by ``prepare``) when
    ``trainer.compile`` is set."""
    device = resolve_device(hardware)
    precision = resolve_mixed_precision(hardware, device)
    if device == "gpu" and hardware.tf32:
        # TF32 tensor cores for fp32 matmuls (Ampere+): ~same accuracy, several times faster.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    dynamo = None
    if trainer.compile:
        dynamo = compile_plugin(trainer.compile_backend, trainer.compile_dynamic)
    return Accelerator(
        cpu=device == "cpu",
        mixed_precision=precision,
        gradient_accumulation_steps=trainer.gradient_accumulation_steps,
        # Pinned host batches only overlap with compute when the copy does not block.
        dataloader_config=DataLoaderConfiguration(non_blocking=device == "gpu"),
        dynamo_plugin=dynamo,
    )
