"""``mnist-lightning serve``'s options: a port in use, a host that is not one, a timeout that is not one: one line.

Run in this process through ``main`` (the checkpoint is a small fixture, so the model loads in a moment); the
advice a line gives is then followed, to show it works as printed.
"""

from __future__ import annotations

import re
import shlex
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from mnist_lightning.cli.main import main
from mnist_lightning.errors import ConfigError
from mnist_lightning.serving.connections import printable
from mnist_lightning.serving.serve import listen

CHECKPOINT = Path(__file__).resolve().parent / "fixtures" / "checkpoints_0_1" / "mlp.ckpt"


def serve_error(capsys: pytest.CaptureFixture[str], *options: str) -> str:
    """The one line ``serve`` ends with (it must not start serving)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--ckpt_path", str(CHECKPOINT), *options])
    assert exit_info.value.code not in (0, None)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mnist-lightning: error: "), err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener.getsockname()[1]


def test_a_port_in_use_is_one_line_and_port_0_works(capsys: pytest.CaptureFixture[str], busy_port: int) -> None:
    line = serve_error(capsys, "--host", "127.0.0.1", "--port", str(busy_port))
    assert f"port {busy_port} on 127.0.0.1 is in use" in line and "--port 0 for a free one" in line, line
    with listen("127.0.0.1", 0) as listener:  # the advice
        assert listener.getsockname()[1] != 0


@pytest.mark.parametrize(
    ("host", "phrase"),
    [
        ("nonexistent.invalid", "not an address or a host name this machine knows"),
        ("999.1.1.1", "not an address or a host name this machine knows"),
        ("192.0.2.1", "not an address of this machine"),  # TEST-NET-1: never an interface here
        ("", "not an IP address or host name"),
        (" ", "not an IP address or host name"),
        ("unix:///tmp/serve.sock", "not an IP address or host name"),
        ("127.0.0.1\x00", "not an IP address or host name"),
    ],
    ids=["unknown-name", "bad-ipv4", "foreign-address", "empty", "blank", "unix-socket", "nul"],
)
def test_a_host_that_cannot_be_listened_on_is_one_line(
    capsys: pytest.CaptureFixture[str], host: str, phrase: str
) -> None:
    line = serve_error(capsys, "--host", host, "--port", "0")
    assert f"cannot listen on --host {shlex.quote(printable(host))}: " in line
    assert phrase in line and "--host 127.0.0.1" in line and "--host 0.0.0.0" in line, line
    with listen("127.0.0.1", 0), listen("0.0.0.0", 0):  # both suggestions work
        pass


@pytest.mark.parametrize(
    ("host", "fix"),
    [
        ("http://127.0.0.1:8000", ["--host", "127.0.0.1", "--port", "8000"]),
        ("127.0.0.1:8000", ["--host", "127.0.0.1", "--port", "8000"]),
        ("http://localhost/", ["--host", "localhost"]),
    ],
    ids=["url", "host-port", "url-no-port"],
)
def test_a_url_as_host_gets_the_host_and_port_apart(
    capsys: pytest.CaptureFixture[str], host: str, fix: list[str]
) -> None:
    line = serve_error(capsys, "--host", host, "--port", "0")
    suggested = shlex.split(re.search(r"give them apart: (.*)$", line).group(1))  # type: ignore[union-attr]
    assert suggested == fix, line
    with listen(suggested[1], 0):  # the suggested host listens (on a free port: 8000 may be taken here)
        pass


def test_an_ipv6_host_in_brackets_is_the_address(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    from mnist_lightning.checkpoints import load_classifier
    from mnist_lightning.serving.serve import start_server

    server = start_server(load_classifier(CHECKPOINT), CHECKPOINT, "[::1]", 0)
    try:
        assert server.host == "::1" and server.port != 0
    finally:
        server.server_close()


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan"])
def test_a_request_timeout_that_is_not_a_positive_number_is_one_line(
    capsys: pytest.CaptureFixture[str], value: str
) -> None:
    line = serve_error(capsys, "--request_timeout", value)
    assert "--request_timeout" in line and value in line, line


def test_start_server_refuses_an_infinite_timeout() -> None:
    from mnist_lightning.checkpoints import load_classifier
    from mnist_lightning.serving.serve import start_server

    with pytest.raises(ConfigError, match="the request timeout must be a positive number of seconds"):
        start_server(load_classifier(CHECKPOINT), CHECKPOINT, "127.0.0.1", 0, request_timeout=float("inf"))


def test_the_default_request_timeout_is_the_servers() -> None:
    from mnist_lightning.cli.main import argparse_parser
    from mnist_lightning.serving.connections import REQUEST_TIMEOUT_S

    options = argparse_parser().parse_args(["serve", "--ckpt_path", "x.ckpt"])
    assert options.request_timeout == REQUEST_TIMEOUT_S
