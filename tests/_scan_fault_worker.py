"""Fault injection for resumable scans (run by tests/test_scan_faults.py as a subprocess).

One process imports torch once, computes the uninterrupted scan, then for every interruption
point and every signal forks a child that scans with a state file and sends itself the signal at
that point, and a second child that resumes; the resumed result must equal the uninterrupted one
byte for byte. Interruption points, counted on an uninterrupted run:

* ``layer``: inside a batch, right after one scanned layer took it (the others not yet);
* ``boundary``: right after a batch was committed (before the next one is read);
* ``save-half``: inside a state save, the temporary file half written;
* ``save-whole``: inside a state save, the temporary file whole, not yet renamed;
* ``save-renamed``: inside a state save, just after the rename.

Signals: SIGINT (Ctrl-C: the scan saves its state and re-raises), SIGTERM and SIGKILL (the
process dies where it stands); the first argument picks them (``SIGINT,SIGKILL``; default all
three). Prints one JSON line: points, scenarios, failures.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
from pathlib import Path

sys.path[:0] = ["src", "tests"]

import torch  # noqa: E402

torch.set_num_threads(1)  # every run rounds alike; forked children need no thread pool

import importlib  # noqa: E402

dio = importlib.import_module("deconvviz.base._io")
scanmod = importlib.import_module(
    "deconvviz.analyses.scan"
)  # deconvviz.analyses.scan is also the function
from scan_models import scan_data, scan_model  # noqa: E402

K, BATCH, IMAGES, SAVE_EVERY = 3, 4, 18, 2  # 5 batches (4, 4, 4, 4, 2), saved every 2
KINDS = ("layer", "boundary", "save-half", "save-whole", "save-renamed")
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}

MODEL, DATA = scan_model(), scan_data(IMAGES)
_count = dict.fromkeys(KINDS, 0)
_target: tuple[str, int, int] | None = None  # (kind, occurrence, signal)
_committed_at_fire: list[int] = []
_real_merge, _real_add = scanmod._merge, scanmod._Scanner.add
_real_fsync, _real_replace = os.fsync, os.replace


def _event(kind: str, done: int | None = None) -> None:
    global _target
    n = _count[kind]
    _count[kind] += 1
    if _target is not None and _target[0] == kind and _target[1] == n:
        sig = _target[2]
        _target = None
        if done is not None:
            _committed_at_fire.append(done)
        os.kill(os.getpid(), sig)


_current: list[scanmod._Scanner] = []


def _merge(*args, **kwargs):
    out = _real_merge(*args, **kwargs)
    _event("layer", _current[0].committed.done if _current else None)
    return out


def _add(self, *args, **kwargs):
    _current[:] = [self]
    _real_add(self, *args, **kwargs)
    _event("boundary", self.committed.done)


def _fsync(fd):
    if _target is not None and _target[0] == "save-half" and _target[1] == _count["save-half"]:
        size = os.fstat(fd).st_size
        os.ftruncate(fd, size // 2)
    _event("save-half")
    return _real_fsync(fd)


def _replace(src, dst, *args, **kwargs):
    _event("save-whole")
    _real_replace(src, dst, *args, **kwargs)
    _event("save-renamed")


scanmod._merge = _merge
scanmod._Scanner.add = _add  # type: ignore[method-assign]
dio.os.fsync = _fsync  # only in this process and its children
dio.os.replace = _replace


def _scan(state: Path, resume: bool):
    return scanmod.scan(
        MODEL,
        DATA,
        "conv",
        k=K,
        batch_size=BATCH,
        progress=False,
        state=state,
        save_every=SAVE_EVERY,
        resume=resume,
    )


def _bytes(res) -> bytes:
    parts = [str(res.images).encode()]
    for name in res.layers:
        t = res[name]
        for x in (t.values, t.indices, t.positions, t.boxes):
            parts.append(x.contiguous().numpy().tobytes())
    return b"|".join(parts)


def _child(fn) -> int:
    """Run ``fn`` in a forked child; returns its wait status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            code = fn() or 0
        except KeyboardInterrupt:
            code = 130
        except BaseException as exc:  # noqa: BLE001
            print(f"child error: {type(exc).__name__}: {exc}", file=sys.stderr)
            code = 3
        os._exit(code)
    return os.waitpid(pid, 0)[1]


def main(signals: list[str]) -> None:
    global _target
    ref = _bytes(_scan_plain())
    # count the points on an uninterrupted run with a state file
    with tempfile.TemporaryDirectory() as tmp:
        for k in KINDS:
            _count[k] = 0
        _scan(Path(tmp) / "state.pt", False)
        points = dict(_count)
    failures: list[str] = []
    scenarios = 0
    for kind in KINDS:
        for occurrence in range(points[kind]):
            for sig_name in signals:
                sig = SIGNALS[sig_name]
                scenarios += 1
                what = f"{sig_name} at {kind} #{occurrence}"
                with tempfile.TemporaryDirectory() as tmp:
                    failures += _scenario(Path(tmp), kind, occurrence, sig, what, ref)
    print(
        json.dumps(
            {"points": sum(points.values()), "per_kind": points, "scenarios": scenarios}
            | {"failures": failures}
        )
    )


def _scan_plain():
    return scanmod.scan(MODEL, DATA, "conv", k=K, batch_size=BATCH, progress=False)


def _scenario(tmp: Path, kind: str, occurrence: int, sig: int, what: str, ref: bytes) -> list[str]:
    global _target
    state, out = tmp / "state.pt", tmp / "result.bin"
    fired = tmp / "fired.json"

    def interrupted() -> int:
        global _target
        for k in KINDS:
            _count[k] = 0
        _target = (kind, occurrence, sig)
        try:
            _scan(state, False)
        finally:
            fired.write_text(json.dumps(_committed_at_fire))
        return 0

    status = _child(interrupted)
    if sig == signal.SIGINT:
        if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 130):
            return [f"{what}: the interrupted run ended with status {status}, not Ctrl-C"]
        done_at = json.loads(fired.read_text())
        if done_at and kind in ("layer", "boundary"):
            saved = scanmod._read_state(state)
            if saved["done"] != done_at[0]:
                return [f"{what}: state says {saved['done']} images done, {done_at[0]} were"]
    elif not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == sig):
        return [f"{what}: the run was not killed (status {status})"]

    def resumed() -> int:
        global _target
        _target = None
        out.write_bytes(_bytes(_scan(state, True)))
        return 0

    status = _child(resumed)
    if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
        return [f"{what}: the resumed run failed (status {status})"]
    problems = []
    if out.read_bytes() != ref:
        problems.append(f"{what}: the resumed result differs from the uninterrupted one")
    left = sorted(p.name for p in tmp.iterdir() if p.name not in {"state.pt", "result.bin"})
    left = [n for n in left if n != "fired.json"]
    if left:
        problems.append(f"{what}: left behind {left}")
    return problems


if __name__ == "__main__":
    main(sys.argv[1].split(",") if len(sys.argv) > 1 else list(SIGNALS))
