"""Device names: which ones this machine has, and a clear error for one it lacks.

Example::

    from deconvviz.base.devices import available_devices, resolve_device

    available_devices()          # ['cpu'] or ['cpu', 'cuda:0', 'cuda:1']
    resolve_device("auto")       # cuda:0 where there is a GPU, else cpu
    resolve_device("cuda:3")     # InputError on a machine without a fourth GPU
"""

from __future__ import annotations

import torch

from deconvviz.base.errors import InputError

__all__ = ["available_devices", "resolve_device"]


def available_devices() -> list[str]:
    """Names of the devices this machine has: ``cpu``, then ``cuda:N`` and ``mps`` if present."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def resolve_device(name: str | torch.device, *, auto: bool = True) -> torch.device:
    """The :class:`torch.device` for ``name``, checked to exist on this machine.

    Args:
        name: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``, a :class:`torch.device`, or
            (with ``auto``) ``"auto"``: the first GPU where there is one, else the CPU.
        auto: accept ``"auto"``.

    Raises:
        InputError: not a device name, or a device this machine does not have (the message
            lists the ones it has).
    """
    have = available_devices()
    listed = ", ".join(have)
    if isinstance(name, str) and name.strip().lower() == "auto" and auto:
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = name if isinstance(name, torch.device) else torch.device(str(name).strip())
    except (RuntimeError, TypeError, ValueError):
        more = ", auto" if auto else ""
        raise InputError(
            f"{str(name)!r} is not a device name; use one this machine has: {listed}{more}"
        ) from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        index = 0 if device.index is None else device.index
        if f"cuda:{index}" in have:
            return device
    elif device.type in have:
        return device
    raise InputError(
        f"device {str(name)!r} is not available on this machine; use one it has: {listed}"
    )
