"""torchrun's process group for the jobs that split a dataset over processes (the atlas):
joining it with a timeout, this process's rank, and one line for a lost peer."""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from deconvviz.base.errors import DeconvvizError, InputError

__all__ = ["join_process_group", "lost_peer_message", "rank", "resolve_job_device"]


def join_process_group(device: str, timeout: int = 600) -> tuple[str, bool]:
    """Join the process group torchrun describes (WORLD_SIZE > 1): gloo on CPU, NCCL on GPUs;
    a collective that waits more than ``timeout`` seconds for a peer fails (instead of gloo's
    30 minutes). Returns the device this process uses and whether it created the group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return device, False
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if dist.is_initialized():
        return device, False
    try:
        dist.init_process_group(
            "nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout)
        )
    except Exception as exc:  # a peer that never came, an address that does not answer
        first = " ".join(str(exc).strip().splitlines()[0].split())[:200] if str(exc) else ""
        raise DeconvvizError(
            f"rank {os.environ.get('RANK', '?')} of {world} could not join the torchrun process "
            f"group within --timeout {timeout}s ({first or type(exc).__name__}); check that "
            "every rank started and MASTER_ADDR/MASTER_PORT reach rank 0"
        ) from exc
    return device, True


def resolve_job_device(device: str) -> torch.device:
    """``auto`` -> cuda where there is one, else cpu; anything else must name a device."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N") from None


def rank() -> int:
    """This process's rank in the process group (0 without one)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def lost_peer_message(exc: BaseException) -> str | None:
    """One line for an error that means a peer process of a torchrun job was lost (it died,
    was stopped, or did not answer within --timeout); None for any other error."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    text = str(exc)
    clues = ("gloo", "nccl", "connection", "timed out", "timeout", "peer", "socket", "closed")
    if not isinstance(exc, getattr(dist, "DistError", ())) and not (
        isinstance(exc, RuntimeError) and any(c in text.lower() for c in clues)
    ):
        return None
    first = " ".join(text.strip().splitlines()[0].split())[:200] if text.strip() else ""
    return (
        f"rank {dist.get_rank()} of {dist.get_world_size()} lost a peer process (it stopped, "
        f"died or did not answer within --timeout): {first or type(exc).__name__}; check the "
        "other ranks' logs, then run again with --resume to continue from the saved scan state"
    )
