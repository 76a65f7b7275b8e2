"""Command ``serve``: explore a network live in the browser (``docs/serve.md``)."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from pathlib import Path
from typing import Any

import click

from deconvviz_cli.model_options import ModelSpec
from deconvviz_cli.options import (
    RUN_HELP,
    data_dir_option,
    dataset_option,
    device_option,
    model_option,
    progress_option,
    split_option,
    stack,
)

LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]
"""Host headers answered on a loopback address (a DNS-rebinding page sends its own name)."""

EXTRA = 'deconvviz serve needs the serve extra; install it with: pip install "deconvviz[serve]"'


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one), or a one-line error."""
    from deconvviz.base.errors import InputError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP: asyncio then sets TCP_NODELAY on each connection (else Nagle + delayed
    # ACK add 40 ms to every keep-alive response)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InputError(
            f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port (0: any free "
            "one) or --host"
        ) from None
    sock.listen(128)
    return sock


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"


def load_target(
    checkpoint: Path | None,
    model_spec: ModelSpec,
    data_dir: Path | None,
    dataset: str | None,
    split: str,
    device: str,
) -> tuple[Any, Any, list[str] | None, str]:
    """``(model, dataset, classes, title)``: the shipped zfnet-cifar on the shipped sample when
    neither a checkpoint nor a model is named, else the run and its data."""
    from deconvviz.sources.datasets import dataset_for_model, load_sample

    if checkpoint is None and not model_spec.model:
        from deconvviz.sources.pretrained import load_pretrained

        model, info = load_pretrained("zfnet-cifar")
        if data_dir is None and dataset is None:
            data = load_sample()
        else:
            data = dataset_for_model(model, info.get("config") or {}, data_dir, dataset, split)
        return model, data, list(info.get("classes") or []) or None, "zfnet-cifar (shipped)"
    loaded = model_spec.load(checkpoint, device)
    data = dataset_for_model(loaded.model, loaded.config, data_dir, dataset, split)
    title = str(checkpoint) if checkpoint is not None else str(model_spec)
    return loaded.model, data, None, title


@click.command("serve", short_help="Explore a network live in the browser.")
@click.option(
    "--checkpoint",
    "-c",
    default=None,
    type=click.Path(path_type=Path),
    metavar="PATH",
    help=RUN_HELP,
)
@stack(model_option, data_dir_option(required=False), dataset_option, split_option())
@click.option(
    "--atlas",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=None,
    metavar="DIR",
    help="An atlas written by 'deconvviz atlas' on the same model and data: the top-k come "
    "from it and each unit links to its page (default: scan the data in the background).",
)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    metavar="DIR",
    help="Where the background scan keeps its resumable state (default: "
    "~/.cache/deconvviz/serve, or $XDG_CACHE_HOME); never the data folder.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Anything but a loopback address exposes the model and the "
    "data to the network (a warning says so).",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8765,
    show_default=True,
    help="Port to listen on; 0 picks a free one.",
)
@device_option()
@progress_option
def serve_cmd(
    checkpoint: Path | None,
    model_spec: ModelSpec,
    data_dir: Path | None,
    dataset: str | None,
    split: str,
    atlas: Path | None,
    cache_dir: Path | None,
    host: str,
    port: int,
    device: str,
    progress: bool,
) -> None:
    """Serve a page to explore a network live: pick a dataset image, upload one or use the
    webcam; see the top-5 classes and every feature map of a layer; click a unit for its
    projection (deconvnet, guided or gradient), its top-9 dataset patches and its occlusion map.
    Every view has its own URL. Ctrl-C stops the server.

    With no options (no -c, no --model) it serves the shipped zfnet-cifar network on the
    shipped 500 CIFAR-10 images, offline. Without --atlas the data is scanned in the background
    for every unit's top-9 (resumable: the state is kept in --cache-dir); --progress shows that
    scan's progress bar.

    \b
    Examples:
      deconvviz serve                                  # then open http://127.0.0.1:8765/
      deconvviz serve -c runs/lenet5 --data-dir ../shared/data --port 0
      deconvviz serve -c runs/lenet5 --data-dir ../shared/data --atlas out/atlas
    """
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        raise click.ClickException(EXTRA) from None
    from deconvviz.serve.app import create_app
    from deconvviz.serve.explorer import Explorer, default_cache_dir

    if not _loopback(host):  # said before anything else, whatever happens next
        click.echo(
            f"Warning: --host {host} is not a loopback address: anyone who can reach this "
            "machine can use the model and read the dataset's images",
            err=True,
        )
    sock = _bind(host, port)  # first: a port in use fails before the model loads
    try:
        model, data, classes, title = load_target(
            checkpoint, model_spec, data_dir, dataset, split, device
        )
        explorer = Explorer(model, data, classes=classes, atlas=atlas, device=device, title=title)
        app = create_app(
            explorer,
            cache_dir=cache_dir or default_cache_dir(),
            progress=progress,
            allowed_hosts=LOOPBACK_NAMES if _loopback(host) else None,
        )
        url = _url(host, sock.getsockname()[1])
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=3)
        server = uvicorn.Server(config)
        click.echo(f"serving {title} on {url} (Ctrl-C stops it)")
        # uvicorn shuts down cleanly on Ctrl-C, then re-raises the signal: that is the end
        with contextlib.suppress(KeyboardInterrupt):
            server.run(sockets=[sock])
    finally:
        sock.close()
    click.echo("stopped; the scan state is saved", err=True)


COMMANDS: list[click.Command] = [serve_cmd]
