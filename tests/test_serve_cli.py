"""``deconvviz serve`` on the command line: the missing extra, a port in use, a real run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from deconvviz_cli.commands.serve import _loopback
from deconvviz_cli.main import cli

ROOT = Path(__file__).resolve().parents[1]


def test_without_the_extra_one_line_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn -> ImportError
    r = CliRunner().invoke(cli, ["serve"])
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install "deconvviz[serve]"' in lines[0], r.stderr


def test_a_port_in_use_is_one_line():
    pytest.importorskip("uvicorn")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = CliRunner().invoke(cli, ["serve", "--port", str(port)])
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "--port" in lines[0], r.stderr


def test_loopback_hosts():
    assert _loopback("127.0.0.1") and _loopback("::1") and _loopback("localhost")
    assert not _loopback("0.0.0.0") and not _loopback("192.168.1.4")


def test_serve_with_no_options_serves_the_shipped_network_and_stops_on_ctrl_c(tmp_path):
    pytest.importorskip("uvicorn")
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), str(ROOT / "cli"), env.get("PYTHONPATH", "")]
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "deconvviz_cli", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("serving zfnet-cifar (shipped) on http://127.0.0.1:"), line
        url = line.split(" on ", 1)[1].split()[0]
        with urllib.request.urlopen(url + "api/model", timeout=60) as r:
            summary = json.loads(r.read())
        assert summary["images"] == 500 and summary["default_layer"] == "relu5"
        with urllib.request.urlopen(url, timeout=60) as r:
            assert b"deconvviz" in r.read()
        time.sleep(0.5)  # let the scan write some state
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopped" in err and "Traceback" not in err
    states = list((tmp_path / "cache").rglob("scan-state.pt"))
    assert states, "the background scan saved no state under XDG_CACHE_HOME"


def test_the_listening_socket_lets_asyncio_set_tcp_nodelay():
    # a socket made without IPPROTO_TCP gets no TCP_NODELAY from asyncio: every keep-alive
    # answer then waits ~40 ms (Nagle + delayed ACK), measured 48 ms -> 0.7 ms on /api/model
    from deconvviz_cli.commands.serve import _bind

    sock = _bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


def test_a_host_that_is_not_loopback_is_warned_about(monkeypatch):
    pytest.importorskip("uvicorn")
    from deconvviz.base.errors import InputError

    def refuse(host: str, port: int) -> None:
        raise InputError("stopped here by the test")

    monkeypatch.setattr("deconvviz_cli.commands.serve._bind", refuse)
    r = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0"])
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("Warning: --host 0.0.0.0 is not a loopback address"), r.stderr
    assert lines[1] == "Error: stopped here by the test"


def _examples() -> list[str]:
    """The ``deconvviz serve`` command lines of docs/serve.md and of ``serve --help``."""
    doc = (ROOT / "docs" / "serve.md").read_text(encoding="utf-8")
    help_text = CliRunner().invoke(cli, ["serve", "--help"], terminal_width=200).output
    lines = [line.strip().removeprefix("$ ") for line in (doc + help_text).splitlines()]
    return [line.split("#")[0] for line in lines if line.startswith("deconvviz serve")]


def test_every_run_and_atlas_the_examples_serve_is_one_the_readme_makes():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    made = {  # what the README's commands write: --out of train and atlas
        kind: {
            line.split("--out ")[1].split()[0]
            for line in readme.splitlines()
            if line.startswith(f"deconvviz {kind} ") and "--out " in line
        }
        for kind in ("train", "atlas")
    }
    examples = _examples()
    assert len(examples) >= 4, examples
    runs = 0
    for line in examples:
        words = line.split()
        for flag, kind in (("-c", "train"), ("--checkpoint", "train"), ("--atlas", "atlas")):
            if flag in words:
                path = words[words.index(flag) + 1]
                assert path in made[kind], (line, path, made[kind])
                runs += 1
        if "-c" in words or "--checkpoint" in words:  # a run is served with its data
            assert "--data-dir" in words, line
    assert runs >= 3, examples
