"""A real Triton Inference Server on this machine, from the ``nvidia-pytriton`` wheel.

For tests and benchmarks that need the real engine rather than ``nscompile serve``. The
``nvidia-pytriton`` 0.7.0 wheel (Python 3.12) ships the ``tritonserver`` 2.51 binary with the
Python backend only (no onnxruntime backend), so a build served by it uses
``nscompile build --triton-backend python``. The recipe:

- a Python 3.12 virtualenv with ``nvidia-pytriton``, ``numpy`` and ``onnxruntime``
  (:func:`create_venv`; ``python -m nscompile.serve.triton_env [VENV]`` from a shell, about two
  minutes the first time, nothing when it is there);
- the binary is ``<site-packages>/pytriton/tritonserver/bin/tritonserver``;
- a backend directory ``B/python/`` holding ``pytriton/tritonserver/backends/python/*`` plus
  ``pytriton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub``, passed as
  ``--backend-directory=B``;
- ``LD_LIBRARY_PATH`` names ``<site-packages>/nvidia_pytriton.libs`` and the directory of
  ``libpython3.12.so``, and ``PATH`` puts the venv's ``bin`` first (the stub runs its ``python``).

:class:`TritonServer` starts it on loopback ports with that recipe.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from nscompile.errors import NscompileError

#: What the venv holds; numpy and onnxruntime are what the generated model.py imports.
TRITON_PACKAGES = ("nvidia-pytriton==0.7.0", "numpy", "onnxruntime")
DEFAULT_VENV = ".venv-triton"
#: Environment variables that override where the venv and Python 3.12 are.
VENV_ENV, PYTHON_ENV = "NSCOMPILE_TRITON_VENV", "NSCOMPILE_PYTHON312"


class TritonUnavailable(NscompileError):
    """Triton cannot run here; the message says why (tests skip with it)."""


def find_python312() -> str | None:
    """A working Python 3.12 interpreter: $NSCOMPILE_PYTHON312, ``python3.12`` on PATH, or pyenv's."""
    candidates = [os.environ.get(PYTHON_ENV), shutil.which("python3.12")]
    candidates += sorted(str(p) for p in Path.home().glob(".pyenv/versions/3.12*/bin/python3.12"))
    for candidate in filter(None, candidates):
        try:
            out = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == "(3, 12)":
            return candidate
    return None


def default_venv() -> Path:
    """$NSCOMPILE_TRITON_VENV, else ``.venv-triton`` in the current directory."""
    return Path(os.environ.get(VENV_ENV) or DEFAULT_VENV)


def create_venv(venv: str | Path | None = None, python: str | None = None) -> Path:
    """Make the Triton virtualenv unless a working one is there.

    Args:
        venv: where (default: :func:`default_venv`).
        python: the Python 3.12 to make it with (default: :func:`find_python312`).

    Returns:
        The venv's path.

    Raises:
        TritonUnavailable: no Python 3.12, or pip could not install the packages.
    """
    venv = Path(venv or default_venv())
    try:
        TritonInstall.locate(venv)
        return venv
    except TritonUnavailable:
        pass
    python = python or find_python312()
    if python is None:
        raise TritonUnavailable(f"no Python 3.12 found (set ${PYTHON_ENV} or put python3.12 on PATH); "
                                "nvidia-pytriton's tritonserver needs it")
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *TRITON_PACKAGES],
                         capture_output=True, text=True)
    if pip.returncode != 0:
        raise TritonUnavailable(f"pip could not install {' '.join(TRITON_PACKAGES)} into {venv}: "
                                f"{pip.stderr.strip().splitlines()[-1:] or pip.returncode}")
    TritonInstall.locate(venv)
    return venv


@dataclass(frozen=True)
class TritonInstall:
    """Where the parts of the recipe lie inside one venv."""

    venv: Path
    binary: Path
    backend_files: tuple[Path, ...]
    library_dirs: tuple[Path, ...]

    @classmethod
    def locate(cls, venv: str | Path | None = None) -> TritonInstall:
        """Find the binary, the Python backend and the libraries in ``venv``.

        Raises:
            TritonUnavailable: a part is missing (the message names it).
        """
        venv = Path(venv or default_venv()).absolute()
        python = venv / "bin" / "python"
        if not python.exists():
            raise TritonUnavailable(f"no Triton venv at {venv}; make it with `python -m nscompile.serve.triton_env {venv}`")
        site = next(iter(sorted(venv.glob("lib/python3.12/site-packages"))), None)
        if site is None:
            raise TritonUnavailable(f"{venv} is not a Python 3.12 venv; remove it and make it again")
        root = site / "pytriton" / "tritonserver"
        binary = root / "bin" / "tritonserver"
        stub = root / "python_backend_stubs" / "3.12" / "triton_python_backend_stub"
        backend = root / "backends" / "python"
        if not binary.is_file() or not stub.is_file() or not (backend / "libtriton_python.so").is_file():
            raise TritonUnavailable(f"nvidia-pytriton is not installed in {venv} (no {binary}); "
                                    f"`{python} -m pip install {' '.join(TRITON_PACKAGES)}`")
        libdir = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                                capture_output=True, text=True, timeout=30).stdout.strip()
        if not libdir or not any(Path(libdir).glob("libpython3.12.so*")):
            raise TritonUnavailable(f"{python} has no shared libpython3.12.so (in {libdir!r}), which the "
                                    "Python backend's stub needs; use a Python built with --enable-shared")
        files = tuple(p for p in backend.iterdir() if p.is_file()) + (stub,)
        return cls(venv, binary, files, (site / "nvidia_pytriton.libs", Path(libdir)))

    def environment(self) -> dict[str, str]:
        """The process environment tritonserver needs (on top of this process's)."""
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*map(str, self.library_dirs), env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
        env["PATH"] = os.pathsep.join([str(self.venv / "bin"), env.get("PATH", "")])
        env.pop("PYTHONPATH", None)  # the stub's Python must not import this process's packages
        return env

    def backend_directory(self, dest: Path) -> Path:
        """Lay out ``dest/python/`` (the backend and its stub) and return ``dest``."""
        python_dir = dest / "python"
        python_dir.mkdir(parents=True, exist_ok=True)
        for f in self.backend_files:
            shutil.copy2(f, python_dir / f.name)
        return dest


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TritonServer:
    """``tritonserver`` serving a model repository on 127.0.0.1, as a child process.

    Args:
        repository: a Triton model repository (a build's ``cloud/``, built with
            ``--triton-backend python`` for this wheel's server).
        install: the venv's parts (default: :meth:`TritonInstall.locate` of the default venv).
        http_port, metrics_port: ports (default: free ones).
        ready_timeout_s: how long to wait for ``/v2/health/ready``.
        extra_args: more tritonserver options.

    Raises:
        TritonUnavailable: the venv is incomplete, or the server exited or never came up
            (the message ends with its log).
        NscompileError: the server is up but a model did not load (the log says why).
    """

    def __init__(self, repository: str | Path, install: TritonInstall | None = None, *, http_port: int | None = None,
                 metrics_port: int | None = None, ready_timeout_s: float = 60.0, extra_args: tuple[str, ...] = ()):
        self.install = install or TritonInstall.locate()
        self.repository = Path(repository).absolute()
        self.http_port, self.metrics_port = http_port or free_port(), metrics_port or free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self._workdir = Path(tempfile.mkdtemp(prefix="nscompile-triton-"))
        self.log_path = self._workdir / "tritonserver.log"
        backends = self.install.backend_directory(self._workdir / "backends")
        command = [
            str(self.install.binary), f"--model-repository={self.repository}", f"--backend-directory={backends}",
            "--http-address=127.0.0.1", f"--http-port={self.http_port}", "--allow-grpc=false",
            "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
            # A model that fails to load leaves the server up and not ready, which the caller
            # sees, instead of an exit that would read as "Triton cannot run here".
            "--exit-on-error=false", *extra_args,
        ]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=self.install.environment(),
                                     cwd=self._workdir)
        self.started_at = time.monotonic()
        try:
            self.ready_s = self.wait_ready(ready_timeout_s)
        except BaseException:
            self.kill()
            raise

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.proc.pid

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's log."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self, timeout_s: float) -> float:
        """Wait until the server is live, then ready; return the seconds since it started.

        Raises:
            TritonUnavailable: it exited or never came up (Triton cannot run here).
            NscompileError: it is up but not ready in time: a model failed to load (the
                message ends with the log, which says why).
        """
        import httpx

        deadline = time.monotonic() + timeout_s
        live = False
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TritonUnavailable(f"tritonserver exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                live = live or httpx.get(f"{self.url}/v2/health/live", timeout=1.0).status_code == 200
                if live and httpx.get(f"{self.url}/v2/health/ready", timeout=1.0).status_code == 200:
                    return time.monotonic() - self.started_at
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        if not live:
            raise TritonUnavailable(f"tritonserver did not come up in {timeout_s:.0f} s: {self.log_tail()}")
        raise NscompileError(f"tritonserver is up but not ready after {timeout_s:.0f} s "
                             f"(a model did not load?): {self.log_tail()}")

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (Triton finishes in-flight requests), then SIGKILL after ``timeout_s``; returns the exit code."""
        stubs = self._stubs()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self._reap(stubs)

    def kill(self) -> int | None:
        """SIGKILL, at once (its Python-backend stubs too, once it is dead); returns the exit code."""
        stubs = self._stubs()
        if self.proc.poll() is None:
            self.proc.kill()
        return self._reap(stubs)

    def _stubs(self) -> list[int]:
        """The server's child processes (one Python-backend stub per model instance), by pid."""
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == self.proc.pid:
                pids.append(int(stat.parent.name))
        return pids

    def _reap(self, stubs: list[int]) -> int | None:
        try:
            code = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            code = None
        # A stub whose server died in the middle of a request can wait for it forever.
        for pid in stubs:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass  # gone already
        self._log.close()
        shutil.rmtree(self._workdir, ignore_errors=True)
        return code

    def __enter__(self) -> TritonServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m nscompile.serve.triton_env [VENV]``: make the Triton venv when it is missing."""
    args = sys.argv[1:] if argv is None else argv
    venv = Path(args[0]) if args else default_venv()
    started = time.monotonic()
    try:
        create_venv(venv)
        install = TritonInstall.locate(venv)
    except TritonUnavailable as exc:
        print(f"Triton is not available: {exc}", file=sys.stderr)
        return 1
    print(f"{install.binary} ready ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
