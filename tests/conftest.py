"""Shared fixtures: the real MNIST copy, wandb offline in a temporary folder, a fresh working directory, and the two
ways of running the command: in this process (:func:`run_cli`) or as the installed console script in a new process
(:func:`run_console_script`)."""

from __future__ import annotations

import os
import sys
import warnings

# One thread per process unless OMP_NUM_THREADS says otherwise, for the test process and every process it starts:
# the suite shares 2 cores between its test processes (`-n 2`, pytest-xdist), a background job (background.py) and
# the commands they start, and two threads per process there made training steps many times slower (measured on a
# busy 2-core machine, the whole suite: the console-script end-to-end test 203 s instead of 47 s, LeNet-5's 200 steps
# 49 s instead of 4 s).
if "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:  # a plugin imported torch before this file: it has read the variable already
        sys.modules["torch"].set_num_threads(1)

# the warning filters the package (and the libraries it imports) add when imported: a fresh process has these and
# Python's defaults, but not pytest's (taken before anything heavy is imported; see in_process.py)
_FILTERS_BEFORE_IMPORTS = list(warnings.filters)

import re  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import background  # noqa: E402
import pytest  # noqa: E402
from in_process import ProcessState, run_in_process  # noqa: E402

from mnist_lightning.cli.main import main as console_main  # noqa: E402  THE one import of the console entry point
from mnist_lightning.data import DATA_DIR_ENV, RAW_FILES, raw_dir  # noqa: E402

PACKAGE_WARNING_FILTERS = [f for f in warnings.filters if f not in _FILTERS_BEFORE_IMPORTS]

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
CONSOLE_SCRIPT = Path(sys.executable).with_name("mnist-lightning")


def _find_mnist() -> Path:
    candidates = [os.environ.get(DATA_DIR_ENV), REPO.parent / "shared" / "mnist", REPO / "data"]
    for candidate in filter(None, candidates):
        if all((raw_dir(candidate) / name).is_file() for name in RAW_FILES):
            return Path(candidate).resolve()
    raise pytest.UsageError(
        f"the tests need the real MNIST files: set {DATA_DIR_ENV} to a folder holding MNIST/raw/*-ubyte"
    )


MNIST_DIR = _find_mnist()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the background jobs (benchmark scripts, notebooks) of the selected tests: see background.py."""
    # under pytest-xdist every worker collects every test: a job then starts when its test asks for it, in the worker
    # that runs that test, instead of once per worker here
    if not session.config.option.collectonly and "PYTEST_XDIST_WORKER" not in os.environ:
        background.start_for(((item.path.name, item.name) for item in session.items), MNIST_DIR)


def pytest_sessionfinish(session: pytest.Session) -> None:
    background.JOBS.stop()


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The folder that holds ``MNIST/raw`` (read-only: never write into it)."""
    return MNIST_DIR


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test runs in its own folder with wandb offline and all of wandb's files kept there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(DATA_DIR_ENV, str(MNIST_DIR))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        folder = tmp_path / ".wandb" / var.lower()
        folder.mkdir(parents=True)
        monkeypatch.setenv(var, str(folder))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_SERVICE", raising=False)
    monkeypatch.delenv("MNIST_LIGHTNING_DEBUG", raising=False)
    return tmp_path


@pytest.fixture(autouse=True)
def process_state() -> object:
    """Whatever a test changes of this process's global state (environment, signal handlers, torch settings,
    logging, a W&B run left open) is put back after it, so that the next test starts as the first did."""
    with ProcessState() as state:
        yield state


@pytest.fixture(scope="module", autouse=True)
def module_process_state() -> object:
    """The same for what a module's shared fixtures change (a deterministic fit sets torch's deterministic mode)."""
    with ProcessState() as state:
        yield state


def one_error_line(result: subprocess.CompletedProcess[str], code: int | None = 1) -> str:
    """The single ``mnist-lightning: error`` line of a failed command (and no traceback); ``code`` None: any
    non-zero exit code."""
    assert result.returncode != 0 if code is None else result.returncode == code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("mnist-lightning: error")]
    return line


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``mnist-lightning *args`` in this process, as the console script would run it in a new one.

    The command sees the arguments in ``sys.argv``; its output is captured at the file descriptors (so Lightning's
    log lines and tqdm reach it too); warnings are shown as a fresh process shows them; ``SystemExit`` becomes the
    return code and an escaped exception is code 1 with its traceback in stderr. Everything the command changed in
    this process is put back afterwards. Use :func:`run_console_script` where the process itself is the point.
    """
    result = run_in_process(console_main, [str(CONSOLE_SCRIPT), *args], PACKAGE_WARNING_FILTERS)
    if check and result.returncode != 0:
        raise AssertionError(f"mnist-lightning {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def subprocess_env() -> dict[str, str]:
    """The test's environment without ``WANDB_SERVICE``: a wandb run made inside the pytest process leaves it set,
    and a child process would then hand its run to the parent's wandb service instead of writing it itself."""
    return {key: value for key, value in os.environ.items() if key != "WANDB_SERVICE"}


def start_console_script(*args: str, **popen: object) -> subprocess.Popen[str]:
    """The installed ``mnist-lightning`` console script as a new process in its own process group (so that ending
    the group also ends what it started, e.g. the other DDP ranks); stdout and stderr are pipes unless given.

    It starts with Ctrl+C (SIGINT) at its default, as from a terminal, even when this test session ignores SIGINT:
    a session started as a background job of a non-interactive shell (``pytest ... &`` in a script) ignores it, and
    a process inherits an ignored signal, so a Ctrl+C test would wait for a fit that never hears it.
    """
    options: dict[str, object] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    options |= {"env": subprocess_env(), "start_new_session": True} | popen
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:  # a handled signal is back at its default in the new program; an ignored one stays ignored
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen([str(CONSOLE_SCRIPT), *args], **options)  # type: ignore[call-overload]
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_console_script(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the installed ``mnist-lightning`` console script as a new process in the current folder."""
    with start_console_script(*args) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    if check and result.returncode != 0:
        raise AssertionError(f"mnist-lightning {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def metric(output: str, name: str) -> float:
    """A metric from Lightning's results table, plain or drawn with box characters (when ``rich`` is installed)."""
    match = re.search(rf"{re.escape(name)}\s*[│┃|]?\s+([0-9.]+(?:e-?\d+)?)", output)
    assert match, f"{name} not in output:\n{output[-2000:]}"
    return float(match.group(1))


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """Mount a small tmpfs (read-only, or tiny for a full disk) where the test can; skip with the reason if not
    (mounting needs root: CI's machine allows it)."""
    mounts: list[Path] = []

    def mount(name: str, options: str) -> Path:
        target = tmp_path / name
        target.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
        mounts.append(target)
        return target

    yield mount
    for target in mounts:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)
