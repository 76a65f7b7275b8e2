"""Command ``atlas``: every unit of every layer over a dataset, as a static site."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from deconvviz_cli.model_options import ModelSpec
from deconvviz_cli.options import (
    batch_size_option,
    choice_option,
    device_option,
    int_option,
    layer_option,
    max_images_option,
    out_option,
    progress_option,
    rule_option,
    run_data_options,
    top_option,
)


def _init_distributed(device: str, timeout: int = 600) -> tuple[str, bool]:
    """Join the process group torchrun describes (WORLD_SIZE > 1): gloo on CPU, NCCL on GPUs;
    a collective that waits more than ``timeout`` seconds for a peer fails (instead of gloo's
    30 minutes). Returns the device this process uses and whether it created the group."""
    import datetime

    import torch
    import torch.distributed as dist

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
        from deconvviz.errors import DeconvvizError

        first = " ".join(str(exc).strip().splitlines()[0].split())[:200] if str(exc) else ""
        raise DeconvvizError(
            f"rank {os.environ.get('RANK', '?')} of {world} could not join the torchrun process "
            f"group within --timeout {timeout}s ({first or type(exc).__name__}); check that "
            "every rank started and MASTER_ADDR/MASTER_PORT reach rank 0"
        ) from exc
    return device, True


@click.command("atlas", short_help="Every unit of every layer over a dataset, as a static site.")
@run_data_options()
@layer_option(multiple=True, help="Layer to scan (default: every Conv2d)")
@top_option("Top activations kept per unit (from distinct images).", short=True)
@rule_option
@max_images_option("Scan only the first N images.")
@batch_size_option(256, "Images per forward pass while scanning.")
@device_option(auto=True)
@choice_option(
    "--precision",
    choices=["fp32", "bf16"],
    default="fp32",
    help="bf16: scan and project under bfloat16 autocast (faster on GPUs and on CPUs with "
    "AVX-512 bf16/AMX; values about 1% off, near-equal top-k entries may swap).",
)
@click.option(
    "--resume/--no-resume",
    default=False,
    show_default=True,
    help="Continue an interrupted scan from OUT/scan-state.pt (refused if the model or data "
    "changed).",
)
@int_option(
    "--save-every", default=20, help="Write the scan state every N batches (and on Ctrl-C)."
)
@int_option(
    "--timeout",
    default=600,
    help="Under torchrun: seconds a process waits for a peer (joining, gathering) before it "
    "stops with an error naming the lost peer.",
)
@out_option("Site folder: index.html, a page per layer and per unit, images.")
@progress_option
@click.pass_context
def atlas_cmd(
    ctx: click.Context,
    checkpoint: Path,
    model_factory: ModelSpec,
    data_dir: Path | None,
    dataset: str | None,
    split: str,
    layers: tuple[str, ...],
    k: int,
    rule: str,
    max_images: int | None,
    batch_size: int,
    device: str,
    precision: str,
    resume: bool,
    save_every: int,
    timeout: int,
    out: Path,
    progress: bool,
) -> None:
    """Scan a dataset once for the top-k activations of every unit of every chosen layer,
    project them all, and write a static site: an index of layers, a page per layer (a grid of
    its units) and a page per unit (its top-k patches and projections). Open OUT/index.html in
    a browser (file:// works) or serve OUT with any static server.

    Under torchrun every process scans and projects its own share, and rank 0 writes the site:

    \b
    Examples:
      deconvviz atlas -c runs/lenet5 --data-dir ../shared/data --out atlas/
      torchrun --nproc_per_node=4 -m deconvviz_cli atlas -c runs/demo -o atlas/
    """
    options = {name: value for name, value in locals().items() if name != "ctx"}
    try:
        _atlas(ctx, **options)
    except Exception as exc:
        lost = _lost_peer(exc)
        if lost is None:
            raise
        from deconvviz.errors import DeconvvizError

        raise DeconvvizError(lost) from exc


def _atlas(
    ctx: click.Context,
    checkpoint: Path,
    model_factory: ModelSpec,
    data_dir: Path | None,
    dataset: str | None,
    split: str,
    layers: tuple[str, ...],
    k: int,
    rule: str,
    max_images: int | None,
    batch_size: int,
    device: str,
    precision: str,
    resume: bool,
    save_every: int,
    timeout: int,
    out: Path,
    progress: bool,
) -> None:
    from deconvviz.atlas import write_atlas
    from deconvviz.datasets import dataset_for_model
    from deconvviz.scan import scan

    dev = _device(ctx, device, timeout)
    if _rank() == 0:  # the folder is this run's until the site is written (others refused)
        from deconvviz._io import lock, lock_path_for

        ctx.with_resource(lock(lock_path_for(out), f"the atlas folder {out}"))
    run = model_factory.load(checkpoint)
    model = run.model.to(dev)
    data = dataset_for_model(run.model, run.config, data_dir, dataset, split)
    result = scan(
        model,
        data,
        list(layers) or "conv",
        k,
        batch_size=batch_size,
        max_images=max_images,
        progress=progress,
        state=out / "scan-state.pt",
        save_every=save_every,
        resume=resume,
        precision=precision,
    )
    projections = _projections(model, data, result, rule, progress, precision)
    if _rank() != 0:
        for _ in projections:  # take part in every layer's projections; rank 0 writes
            pass
        return
    about = _about(str(checkpoint), str(model_factory), dataset, run.config, split, rule)
    site = write_atlas(out, result, projections, about=about)
    click.echo(_summary(result, k, site.index))


def _lost_peer(exc: BaseException) -> str | None:
    """One line for an error that means a peer process of a torchrun job was lost (it died,
    was stopped, or did not answer within --timeout); None for any other error."""
    import torch.distributed as dist

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


def _about(
    checkpoint: str, model: str, dataset: str | None, config: dict[str, Any], split: str, rule: str
) -> dict[str, str]:
    """What the site's index says it shows."""
    return {
        "model": checkpoint + (f" ({model})" if model else ""),
        "dataset": f"{dataset or config.get('dataset', 'from the run')} ({split})",
        "rule": rule,
    }


def _summary(result: Any, k: int, index: Path) -> str:
    units = sum(result[layer].channels for layer in result.layers)
    return (
        f"wrote the atlas of {len(result.layers)} layers, {units} units (top-{k} of "
        f"{result.images} images) to {index}"
    )


def _device(ctx: click.Context, device: str, timeout: int = 600) -> Any:
    """The torch device of this process (joining torchrun's process group where there is
    one, left again when the command ends)."""
    import torch

    from deconvviz.errors import InputError

    device, created = _init_distributed(device, timeout)
    if created:
        import torch.distributed as dist

        ctx.call_on_close(dist.destroy_process_group)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N") from None


def _projections(
    model: Any, data: Any, result: Any, rule: str, progress: bool, precision: str = "fp32"
) -> Iterator[Any]:
    """Each scanned layer's projections, lazily, in parts that fit the memory budget (so the
    writer holds one part's pictures at a time; every rank takes part in each)."""
    from deconvviz.scan import layer_parts, project_layer

    for layer in result.layers:
        top = result[layer]
        for part in layer_parts(top):
            proj = project_layer(
                model, data, top, rule, progress=progress, precision=precision, channels=part
            )
            if proj is not None:
                yield proj


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


COMMANDS = [atlas_cmd]
