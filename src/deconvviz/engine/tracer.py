"""The tracer: the one owner of every hook and function mode a forward pass needs.

Everything in deconvviz that looks inside a forward pass (the deconvnet engine, dataset scans,
statistics, occlusion, the analyses) goes through :class:`Tracer`. It registers its hooks when
entered and removes every one of them when left -- on success, on an exception, and when a
listener ends the pass early -- so nothing stays attached to the user's model.

Example:
    >>> tracer = Tracer(model)                                    # doctest: +SKIP
    >>> tracer.on_return(lambda name, call, module, args, out: print(name, call))
    >>> with tracer:
    ...     tracer.run(x, stop_after="features.3")
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

from deconvviz.base.checks import split_call  # layer-name spelling: a base input check

__all__ = ["StopForward", "Tracer", "eval_mode", "exact_cuda"]

#: ``fn(name, call, module, args)``: a module is about to run (``call``: how many times it ran
#: before in this pass).
CallListener = Callable[[str, int, nn.Module, tuple[Any, ...]], None]
#: ``fn(name, call, module, args, out)``: a module has returned ``out``.
ReturnListener = Callable[[str, int, nn.Module, tuple[Any, ...], Any], None]


class StopForward(Exception):
    """Raised by a listener (or :meth:`Tracer.stop`) to end the forward pass early."""


class Tracer:
    """Hooks on a model's submodules (and optionally a function mode) for one or more passes.

    Args:
        model: the model; never modified (hooks live only inside ``with tracer:``).
        modules: which submodules to watch, ``{module: name}``; default: every submodule as
            ``named_modules()`` names it (the model itself excluded unless ``include_root``).
        mode: a :class:`~torch.overrides.TorchFunctionMode` entered for each pass (it sees every
            torch call: how the engine swaps ReLU calls and logs activation functions).
        include_root: also watch the model itself (under the name ``""``).

    During and after a pass: ``counts`` (calls per module name), ``order`` (names in the order
    of their first call), ``stack`` (names of the modules running now, innermost last).

    Threads: a tracer sees only the passes of the thread that entered it. Hooks live on the
    (shared) model, so another thread's tracer on the same model sees its calls too, and
    ignores them: several threads may trace and project the same model at once, each with its
    own tracer (the engine makes one per call), and :func:`eval_mode` keeps the model in eval
    mode until the last of them is done.
    """

    def __init__(
        self,
        model: nn.Module,
        modules: Mapping[nn.Module, str] | None = None,
        *,
        mode: TorchFunctionMode | None = None,
        include_root: bool = False,
    ) -> None:
        self.model = model
        if modules is None:
            named: dict[nn.Module, str] = {}
            for name, m in model.named_modules():
                if m is not model or include_root:
                    named.setdefault(m, name)
            modules = named
        self.names: dict[nn.Module, str] = dict(modules)
        self.mode = mode
        self.counts: Counter[str] = Counter()
        self.order: list[str] = []
        self.stack: list[str] = []
        self._on_call: list[CallListener] = []
        self._on_return: list[ReturnListener] = []
        self._handles: list[RemovableHandle] = []
        self._stop_after: tuple[str, int] | None = None
        self._stop_before: tuple[str, int] | None = None
        self._thread: int | None = None  # the thread that entered it: the only one it sees

    # ------------------------------------------------------------------ listeners

    def on_call(self, fn: CallListener) -> CallListener:
        """Call ``fn(name, call, module, args)`` before every watched module runs."""
        self._on_call.append(fn)
        return fn

    def on_return(self, fn: ReturnListener) -> ReturnListener:
        """Call ``fn(name, call, module, args, out)`` after every watched module returns."""
        self._on_return.append(fn)
        return fn

    @staticmethod
    def stop() -> None:
        """End the current pass (from inside a listener)."""
        raise StopForward

    # ------------------------------------------------------------------ hooks

    def __enter__(self) -> Tracer:
        if self._handles:
            raise RuntimeError("this Tracer is already entered")
        self._thread = threading.get_ident()
        try:
            for module in self.names:
                self._handles.append(module.register_forward_pre_hook(self._pre))
                self._handles.append(module.register_forward_hook(self._post))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._remove()  # never swallows the caller's exception

    def _remove(self) -> None:
        handles, self._handles = self._handles, []
        for h in handles:
            h.remove()

    def _pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if threading.get_ident() != self._thread:
            return  # another thread's pass through the same model
        name = self.names[module]
        call = self.counts[name]
        self.counts[name] = call + 1
        if call == 0:
            self.order.append(name)
        self.stack.append(name)
        for fn in self._on_call:
            fn(name, call, module, args)
        if self._stop_before == (name, call):
            raise StopForward

    def _post(self, module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if threading.get_ident() != self._thread:
            return
        name = self.names[module]
        if self.stack and self.stack[-1] == name:
            self.stack.pop()
        call = self.counts[name] - 1
        for fn in self._on_return:
            fn(name, call, module, args, out)
        if self._stop_after == (name, call):
            raise StopForward

    # ------------------------------------------------------------------ passes

    def reset(self) -> None:
        """Forget the call counts of the previous pass (done by :meth:`run`)."""
        self.counts.clear()
        self.order.clear()
        self.stack.clear()

    def run(
        self,
        x: Any,
        *,
        grad: bool = False,
        eval: bool = True,
        stop_after: str | None = None,
        stop_before: str | None = None,
        exact: bool = True,
    ) -> Any:
        """One forward pass ``model(x)``; returns its output, or ``None`` when it was stopped.

        Args:
            grad: run with autograd on (the engine's projections) or off.
            eval: run in eval mode (``training`` flags restored afterwards).
            stop_after: a layer (``"name"`` or ``"name:call"``): end the pass once it returned.
            stop_before: a layer: end the pass just before it runs (its input is then in the
                ``on_call`` listeners' ``args``).
            exact: on CUDA, run in full float32 (:func:`exact_cuda`); False keeps the user's
                TF32/cuDNN settings (passes that only measure, where speed matters more).
        """
        if not self._handles and self.names:
            raise RuntimeError("Tracer.run() outside `with tracer:`")
        self.reset()
        self._stop_after = _stop_point(stop_after)
        self._stop_before = _stop_point(stop_before)
        modes = contextlib.ExitStack()
        with modes:
            if eval:
                modes.enter_context(eval_mode(self.model))
            modes.enter_context(torch.enable_grad() if grad else torch.no_grad())
            if exact and isinstance(x, Tensor):
                modes.enter_context(exact_cuda(x, self.model.modules()))
            if self.mode is not None:
                modes.enter_context(self.mode)
            try:
                return self.model(x)
            except StopForward:
                return None
            finally:
                self._stop_after = self._stop_before = None


def _stop_point(layer: str | None) -> tuple[str, int] | None:
    if layer is None:
        return None
    name, call = split_call(layer)
    return name, call or 0


_EVAL_LOCK = threading.Lock()
_EVAL_USERS: dict[int, tuple[int, list[tuple[nn.Module, bool]]]] = {}  # id(model) -> (n, flags)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode; every module's ``training`` flag is restored afterwards.

    Safe across threads: the flags are saved by the first thread that enters and restored by
    the last one that leaves, so one thread never puts the model back in training mode while
    another is still running it.

    Example:
        >>> with eval_mode(model), torch.no_grad():   # doctest: +SKIP
        ...     logits = model(x)
    """
    key = id(model)
    with _EVAL_LOCK:
        users, saved = _EVAL_USERS.get(key, (0, []))
        if users == 0:
            saved = [(m, m.training) for m in model.modules()]
            model.eval()
        _EVAL_USERS[key] = (users + 1, saved)
    try:
        yield
    finally:
        with _EVAL_LOCK:
            users, saved = _EVAL_USERS[key]
            if users == 1:
                del _EVAL_USERS[key]
                for m, flag in saved:
                    m.training = flag
            else:
                _EVAL_USERS[key] = (users - 1, saved)


@contextlib.contextmanager
def exact_cuda(x: Tensor, modules: Iterable[nn.Module]) -> Iterator[None]:
    """Context for passes whose numbers must not depend on the device.

    On CUDA: full-precision float32 (no TF32, which changes projections by several percent),
    and cuDNN off where RNNs must run backward in eval mode (captum#328). Restored after."""
    if not x.is_cuda:
        yield
        return
    cudnn = torch.backends.cudnn
    rnn = any(isinstance(m, nn.RNNBase) for m in modules)
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        with cudnn.flags(
            enabled=cudnn.enabled and not rnn,
            benchmark=cudnn.benchmark,
            deterministic=cudnn.deterministic,
            allow_tf32=False,
        ):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
