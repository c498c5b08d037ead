"""Process-group set-up for training with accelerate: DDP or DeepSpeed, CPU (gloo) or GPU (NCCL).

Facts this module encodes (measured on the CPU dev machines):

* ``accelerate launch --cpu --num_processes 2`` starts ONE process (the simple launcher); the
  multi-GPU launcher with ``Accelerator(cpu=True)`` gives real gloo ranks. Our CPU config files
  use ``distributed_type: MULTI_GPU``, and ``check_world_size`` refuses a run whose world size
  differs from the one its launcher passed (``--world-size``).
* accelerate's DeepSpeed path on a machine without CUDA needs ``DS_ACCELERATOR=cpu`` and an
  explicit gloo backend; DeepSpeed's first CPU ``init_distributed`` JIT-compiles a shared-memory
  all-reduce op (~25 s, needs a compiler), which gloo makes unnecessary at our sizes, so it is
  skipped unless ``CDC_DS_SHM=1``.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import torch

from cdc.config import TrainConfig

FAST_PATH_MIN_STEPS = 2000
"""``train.fast_path=auto`` turns the fast path on for CPU runs of at least this many steps: the
break-even of compiling each phase (0.5-1 min on 2 cores) in the autoencoder phase, whose steps it
speeds up least."""


@dataclass(frozen=True)
class StepPath:
    """How the training step runs: the resolved ``train.fast_path`` (see ``TrainConfig``)."""

    compile: bool
    channels_last: bool
    mixed_precision: str  # "auto", "bf16" or "no": accelerate's setting, before make_accelerator resolves auto
    why: str  # one line for the log


def cpu_has_native_bf16() -> bool:
    """True where oneDNN runs bf16 convolutions and matmuls natively (AVX-512-BF16 or AMX tiles)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without the probes: assume not (bf16 would be emulated, slower)
        return False


def step_path(tc: TrainConfig, cuda: bool | None = None) -> StepPath:
    """Resolve ``tc.fast_path`` for this machine (``cuda``: None asks torch)."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if tc.fast_path == "auto":
        fast = not cuda and not using_deepspeed() and tc.max_steps >= FAST_PATH_MIN_STEPS
        why = (f"fast path auto: {'on' if fast else 'off'} ("
               f"{'a GPU' if cuda else 'DeepSpeed' if using_deepspeed() else f'{tc.max_steps} steps'})")
    else:
        fast, why = tc.fast_path == "on", f"fast path {tc.fast_path}"
    compiled, channels_last = tc.compile or fast, tc.channels_last or fast
    bf16 = fast and not cuda and tc.mixed_precision == "auto" and cpu_has_native_bf16()
    mixed = "bf16" if bf16 else tc.mixed_precision
    autocast = mixed == "bf16" or (mixed == "auto" and cuda)
    parts = [name for name, on in (("compiled step", compiled), ("channels-last", channels_last),
                                   ("bf16 autocast", autocast)) if on]
    return StepPath(compiled, channels_last, mixed, f"{why}: {', '.join(parts) or 'eager fp32 step'}")


class LaunchError(RuntimeError):
    """The launch does not match what was asked for."""


def using_deepspeed() -> bool:
    """True under ``accelerate launch`` with a DeepSpeed config."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def prepare_environment() -> None:
    """Call before importing accelerate/deepspeed."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def make_accelerator(mixed_precision: str, output_dir: Path, micro_batch: int, grad_clip: float,
                     find_unused: bool = False):
    """An ``Accelerator`` for this machine (CPU -> gloo, GPU -> NCCL; bf16 autocast on GPU only).

    ``find_unused``: let DDP find parameters without gradients each step (the training phases of
    the fast-start recipe freeze or skip parts of the model); it costs a graph traversal per step.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs, ProjectConfiguration

    cuda = torch.cuda.is_available()
    handlers: list = [DistributedDataParallelKwargs(find_unused_parameters=find_unused)]
    deepspeed = using_deepspeed()
    if deepspeed and not cuda:
        if os.environ.get("CDC_DS_SHM") != "1":
            import deepspeed.ops

            deepspeed.ops.__compatible_ops__ = {}  # no JIT-compiled shm op: plain gloo collectives
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    if mixed_precision == "auto":
        mixed_precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    accelerator = Accelerator(
        cpu=not cuda and not deepspeed,
        mixed_precision=mixed_precision,
        project_config=ProjectConfiguration(project_dir=str(output_dir)),
        # our schedule counts optimizer steps; accelerate would otherwise step it once per process
        step_scheduler_with_optimizer=False,
        kwargs_handlers=handlers,
    )
    if deepspeed:
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        # We shard data ourselves (no prepared DataLoader), so fill the batch fields accelerate would infer.
        ds["train_micro_batch_size_per_gpu"] = micro_batch
        ds["gradient_accumulation_steps"] = 1
        ds["train_batch_size"] = micro_batch * accelerator.num_processes
        if ds.get("gradient_clipping") == "auto":
            ds["gradient_clipping"] = grad_clip
    return accelerator


def check_world_size(actual: int, expected: int | None) -> None:
    """Raise ``LaunchError`` if the launch asked for ``expected`` processes and this run has
    ``actual`` (``None``: nothing was asked; the grid's launchers always pass it)."""
    if expected is not None and expected != actual:
        raise LaunchError(
            f"the launch asked for {expected} processes but this run has {actual} "
            f"(accelerate's --cpu launcher starts only one process: use "
            f"{shlex.quote('--config_file infra/accelerate/cpu.yaml')} or --multi_gpu with ACCELERATE_USE_CPU=true)"
        )


def replica_checksums(accelerator, model: torch.nn.Module) -> list[float]:
    """A float64 checksum of the weights on every rank (equal when replicas are in sync)."""
    with torch.no_grad():
        total = sum(p.detach().double().abs().sum() + p.detach().double().sum() * 1e-3 for p in model.parameters())
    local = torch.tensor([float(total)], dtype=torch.float64, device=accelerator.device)
    return [float(v) for v in accelerator.gather(local).cpu()]


def stop_unused_search(accelerator, model):
    """``model`` wrapped anew by DDP without ``find_unused_parameters``, once every parameter gets
    a gradient at every step (the joint phase of the fast-start recipe).

    The search costs an extra traversal of the autograd graph at every step; the recipe's earlier
    phases need it, the joint phase does not. DDP fixes the choice at wrapping, so the module is
    wrapped again (its weights, the optimizer and the accelerator's checkpointing stay the same).
    Anything other than a searching DDP wrapper (one process, DeepSpeed) is returned as it is.
    """
    from torch.nn.parallel import DistributedDataParallel

    if not isinstance(model, DistributedDataParallel) or not model.find_unused_parameters:
        return model
    module = model.module
    model._remove_autograd_hooks()  # the old reducer would otherwise all-reduce every gradient too
    accelerator._models.remove(module)  # accelerate tracks the unwrapped module; prepare_model adds it again
    accelerator.ddp_handler.find_unused_parameters = False
    return accelerator.prepare_model(module)
