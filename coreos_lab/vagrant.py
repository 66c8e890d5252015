"""Vagrant, driven for a lab directory: the only module importing python-vagrant.

python-vagrant's quirks, and what this module does about them:

- ``ssh()`` / ``ssh_config()`` swallow failures (stderr to /dev/null, empty answers): here they raise
  :class:`~coreos_lab.errors.VagrantError` carrying the last lines of Vagrant's stderr.
- its ``conf()`` cache goes stale after ``up()``: we never use it; ``ssh_config_text`` has its own cache,
  dropped by every up / reload / halt / destroy and whenever ``.vagrant/machines/*/*/id`` change.
- a missing ``vagrant`` is a bare ``RuntimeError``; a missing provider plugin is a long Ruby message: both
  become one line naming the Debian and upstream package to install.
- its command methods take one machine name and hide stderr: the lifecycle commands (up, halt, destroy,
  reload, provision) run through :meth:`VagrantLab._stream` instead, which takes several names, streams
  every line to a callback and keeps stderr for the error. python-vagrant still parses ``status`` and
  finds the executable.

>>> lab = VagrantLab(Path("my-lab"), provider="libvirt")          # doctest: +SKIP
>>> lab.up(on_line=print)                                          # doctest: +SKIP
>>> [m.name for m in lab.status() if m.running]                    # doctest: +SKIP
['core-01', 'core-02', 'core-03']
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import vagrant as pyvagrant

from coreos_lab.errors import VagrantError
from coreos_lab.fsutil import atomic_write

LineFn = Callable[[str], None]

STATE_DIR: Final = ".coreos-lab"
SSH_CONFIG_FILE: Final = "ssh-config"
SSH_CONFIG_KEY_FILE: Final = "ssh-config.key"
# Providers that bring machines up in parallel (`vagrant up --parallel` is a no-op for the others).
PARALLEL_PROVIDERS: Final = frozenset({"libvirt", "docker", "hyperv", "vmware_desktop", "aws"})
INSTALL_HINTS: Final = {
    "vagrant": "install Vagrant: apt-get install vagrant (Debian/Ubuntu) or the upstream package from HashiCorp",
    "libvirt": (
        "install the vagrant-libvirt plugin: apt-get install vagrant-libvirt libvirt-daemon-system "
        "qemu-system-x86 (Debian/Ubuntu), or `vagrant plugin install vagrant-libvirt`"
    ),
    "virtualbox": "install VirtualBox from virtualbox.org (Debian does not ship it), or use --provider libvirt",
}
_PROVIDER_MISSING_RE: Final = re.compile(r"provider '([\w-]+)' could not be found", re.IGNORECASE)
_PROGRESS_RE: Final = re.compile(r"^(?:==> |    )([A-Za-z0-9][\w.-]*): (.*)$")
_ANSI_RE: Final = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_RUBY_FRAME_RE: Final = re.compile(r"^\s*(?:from\s+)?\S+\.rb:\d+:in [`'][^']*'(?::\s*(.*))?$")
DEFAULT_TIMEOUT: Final = 3600.0
INTERRUPT_GRACE: Final = 120.0  # seconds Vagrant gets to clean up after Ctrl-C before it is killed


@dataclass(frozen=True, slots=True)
class MachineState:
    """One Vagrant machine as ``vagrant status`` reports it."""

    name: str
    state: str
    provider: str

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def created(self) -> bool:
        return self.state not in ("not_created", "")


def vagrant_executable() -> str:
    """The ``vagrant`` binary on PATH, or VagrantError naming the package to install."""
    exe = pyvagrant.get_vagrant_executable()  # type: ignore[no-untyped-call]
    if not exe:
        raise VagrantError("vagrant is not installed (not found on PATH)", hint=INSTALL_HINTS["vagrant"])
    return str(exe)


def parse_progress(line: str, nodes: Iterable[str]) -> tuple[str, str] | None:
    """``"==> core-01: Booting VM..."`` -> ``("core-01", "Booting VM...")`` for a known node, else None.

    >>> parse_progress("==> core-02: Waiting for domain to get an IP address...", ["core-01", "core-02"])
    ('core-02', 'Waiting for domain to get an IP address...')
    >>> parse_progress("Bringing machine 'core-01' up with 'libvirt' provider...", ["core-01"]) is None
    True
    """
    match = _PROGRESS_RE.match(_ANSI_RE.sub("", line.rstrip("\r\n")))
    if match is None or match.group(1) not in set(nodes):
        return None
    return match.group(1), match.group(2).strip()


def explain_failure(command: str, exit_code: int, stderr: str) -> VagrantError:
    """Turn a failed Vagrant command into one VagrantError line (with an install hint when it is one)."""
    text = _ANSI_RE.sub("", stderr)
    missing = _PROVIDER_MISSING_RE.search(text)
    if missing:
        provider = missing.group(1)
        return VagrantError(
            f"Vagrant has no {provider!r} provider",
            hint=INSTALL_HINTS.get(provider, f"install the vagrant-{provider} plugin"),
        )
    lines = []
    for raw in text.splitlines():
        # An uncaught Ruby exception: keep its message, drop the backtrace locations.
        frame = _RUBY_FRAME_RE.match(raw)
        if frame is None:
            if raw.strip():
                lines.append(raw.strip())
        elif frame.group(1):
            lines.append(frame.group(1).strip())
    tail = " | ".join(lines[-4:]) if lines else "no output on stderr"
    return VagrantError(f"vagrant {command} failed (exit {exit_code}): {tail}")


def machine_ids_key(lab_dir: Path) -> str:
    """A hash of ``.vagrant/machines/*/*/id`` (names and contents): changes when machines are (re)created."""
    h = hashlib.sha256()
    for path in sorted((lab_dir / ".vagrant" / "machines").glob("*/*/id")):
        with contextlib.suppress(OSError):
            h.update(str(path.relative_to(lab_dir)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def created_machines(lab_dir: Path) -> list[str]:
    """Machines Vagrant has created in this lab (an ``id`` file exists), without running Vagrant."""
    names = {p.parent.parent.name for p in (lab_dir / ".vagrant" / "machines").glob("*/*/id") if p.read_bytes().strip()}
    return sorted(names)


class VagrantLab:
    """Vagrant for one lab directory (the one holding the rendered ``Vagrantfile``)."""

    def __init__(
        self,
        lab_dir: Path,
        provider: str | None = None,
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.lab_dir = Path(lab_dir).resolve()
        if not (self.lab_dir / "Vagrantfile").is_file():
            raise VagrantError(
                f"{self.lab_dir} has no Vagrantfile", hint="run `coreos-lab init` or `coreos-lab render`"
            )
        self.provider = provider
        self.env = dict(os.environ if env is None else env)
        # Vagrant's own update checks and colours only slow down and garble machine-driven runs.
        self.env.setdefault("VAGRANT_NO_COLOR", "1")
        self.env.setdefault("VAGRANT_CHECKPOINT_DISABLE", "1")
        if provider:
            self.env.setdefault("VAGRANT_DEFAULT_PROVIDER", provider)
        self.timeout = timeout
        self._exe: str | None = None

    @property
    def exe(self) -> str:
        if self._exe is None:
            self._exe = vagrant_executable()
        return self._exe

    @property
    def parallel_capable(self) -> bool:
        """Whether this lab's provider can bring machines up in parallel (VirtualBox cannot)."""
        return (self.provider or "virtualbox") in PARALLEL_PROVIDERS

    # -- queries -------------------------------------------------------------------------------------
    def status(self) -> list[MachineState]:
        """Every machine of the Vagrantfile with its state (``running``, ``not_created``, ``shutoff``...)."""
        self.exe  # noqa: B018 - a clear "not installed" error before python-vagrant's RuntimeError
        client = pyvagrant.Vagrant(root=str(self.lab_dir), env=self.env, err_cm=self._stderr_sink)  # type: ignore[no-untyped-call]
        self._stderr_buffer = b""
        try:
            entries = client.status()  # type: ignore[no-untyped-call]
        except subprocess.CalledProcessError as exc:
            raise explain_failure("status", exc.returncode, self._stderr_text()) from None
        except RuntimeError as exc:
            raise VagrantError(f"vagrant status failed: {exc}", hint=INSTALL_HINTS["vagrant"]) from None
        return [MachineState(str(s.name), str(s.state or ""), str(s.provider or "")) for s in entries]

    def ssh(self, node: str, command: str, *, timeout: float = 300.0) -> str:
        """Run ``command`` on ``node`` through ``vagrant ssh`` and return stdout; raise on any failure."""
        proc = self._run(["ssh", node, "--command", command], timeout=timeout)
        if proc.returncode != 0:
            raise explain_failure(f"ssh {node}", proc.returncode, proc.stderr or proc.stdout)
        return proc.stdout

    def ssh_config(self, nodes: Sequence[str] | None = None) -> str:
        """``vagrant ssh-config`` for the given (default: all created) nodes, in ONE Vagrant process."""
        return ssh_config_text(self.lab_dir, nodes, env=self.env)

    # -- lifecycle -----------------------------------------------------------------------------------
    def up(
        self,
        nodes: Sequence[str] | None = None,
        *,
        parallel: bool = True,
        provision: bool | None = None,
        on_line: LineFn | None = None,
    ) -> None:
        """``vagrant up`` (in parallel where the provider can), streaming each output line to ``on_line``."""
        args = ["up", *(nodes or [])]
        if self.provider:
            args.append(f"--provider={self.provider}")
        args.append("--parallel" if parallel and self.parallel_capable else "--no-parallel")
        if provision is not None:
            args.append("--provision" if provision else "--no-provision")
        try:
            self._stream(args, on_line)
        finally:
            invalidate_ssh_config(self.lab_dir)

    def halt(self, nodes: Sequence[str] | None = None, *, force: bool = False, on_line: LineFn | None = None) -> None:
        args = ["halt", *(nodes or [])] + (["--force"] if force else [])
        try:
            self._stream(args, on_line)
        finally:
            invalidate_ssh_config(self.lab_dir)

    def destroy(self, nodes: Sequence[str] | None = None, *, on_line: LineFn | None = None) -> None:
        # Never --parallel: vagrant-libvirt's parallel destroys race to remove the networks they share
        # ("Network not found"), and a serial destroy takes ~1 s per machine anyway.
        args = ["destroy", "--force", *(nodes or [])]
        try:
            self._stream(args, on_line)
        finally:
            invalidate_ssh_config(self.lab_dir)

    def reload(
        self, nodes: Sequence[str] | None = None, *, provision: bool = False, on_line: LineFn | None = None
    ) -> None:
        args = ["reload", *(nodes or [])] + (["--provision"] if provision else [])
        try:
            self._stream(args, on_line)
        finally:
            invalidate_ssh_config(self.lab_dir)

    def provision(self, nodes: Sequence[str] | None = None, *, on_line: LineFn | None = None) -> None:
        """Re-run the provisioners: copies each node's cloud-config again and applies it (the rendered provisioner)."""
        self._stream(["provision", *(nodes or [])], on_line)

    # -- plumbing ------------------------------------------------------------------------------------
    _stderr_buffer: bytes = b""

    @contextlib.contextmanager
    def _stderr_sink(self):  # type: ignore[no-untyped-def]
        """python-vagrant's err_cm: capture stderr in a temp file so failures can quote it."""
        import tempfile

        with tempfile.TemporaryFile() as fh:
            try:
                yield fh
            finally:
                fh.seek(0)
                self._stderr_buffer = fh.read()

    def _stderr_text(self) -> str:
        return self._stderr_buffer.decode("utf-8", "replace")

    def _run(self, args: Sequence[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [self.exe, *args],
                cwd=self.lab_dir,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise VagrantError(f"vagrant {args[0]} did not finish within {timeout:g}s") from None

    @staticmethod
    def _interrupt(proc: subprocess.Popen[str], emit: LineFn, lock: threading.Lock) -> None:
        """Ctrl-C: let Vagrant stop gracefully (one SIGINT, bounded wait); a second Ctrl-C kills it.

        Killing Vagrant outright mid-``up`` can leave a half-defined domain, a held machine lock and
        stale ``.vagrant/`` state; after its own SIGINT handling the next ``up`` or ``destroy`` works.
        Its clean-up lines keep flowing to ``emit`` (the pipe must be drained or Vagrant blocks on it).
        """

        def drain() -> None:
            assert proc.stdout is not None  # noqa: S101 - a PIPE
            with contextlib.suppress(OSError, ValueError):
                for line in proc.stdout:
                    with lock:
                        emit(line.rstrip("\n"))

        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        drainer = threading.Thread(target=drain, daemon=True)
        drainer.start()
        try:
            proc.wait(timeout=INTERRUPT_GRACE)
        except (KeyboardInterrupt, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        drainer.join(timeout=5)

    def _stream(self, args: Sequence[str], on_line: LineFn | None) -> None:
        """Run Vagrant, hand every stdout and stderr line to ``on_line``, raise with stderr on failure."""
        emit = on_line or (lambda _line: None)
        err_lines: list[str] = []
        proc = subprocess.Popen(
            [self.exe, *args],
            cwd=self.lab_dir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            bufsize=1,
            # Its own session: a Ctrl-C at the terminal reaches only us, and we hand Vagrant exactly one
            # SIGINT (its graceful stop). A second SIGINT makes Vagrant exit at once, skipping its clean-up.
            start_new_session=True,
        )
        assert proc.stdout is not None  # noqa: S101 - a PIPE
        assert proc.stderr is not None  # noqa: S101 - a PIPE
        lock = threading.Lock()

        def pump_stderr() -> None:
            assert proc.stderr is not None  # noqa: S101
            for line in proc.stderr:
                err_lines.append(line)
                with lock:
                    emit(line.rstrip("\n"))

        reader = threading.Thread(target=pump_stderr, daemon=True)
        reader.start()
        timer = threading.Timer(self.timeout, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                with lock:
                    emit(line.rstrip("\n"))
            code = proc.wait()
        except KeyboardInterrupt:
            self._interrupt(proc, emit, lock)
            raise
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            timer.cancel()
            reader.join(timeout=5)
        if code != 0:
            if code < 0:
                raise VagrantError(f"vagrant {args[0]} was killed after {self.timeout:g}s")
            raise explain_failure(args[0], code, "".join(err_lines))


def _cache_paths(lab_dir: Path) -> tuple[Path, Path]:
    state = lab_dir / STATE_DIR
    return state / SSH_CONFIG_FILE, state / SSH_CONFIG_KEY_FILE


def invalidate_ssh_config(lab_dir: Path) -> None:
    """Forget the cached ``vagrant ssh-config`` of the lab (after up / reload / halt / destroy)."""
    for path in _cache_paths(Path(lab_dir)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def ssh_config_text(lab_dir: Path, nodes: Sequence[str] | None = None, *, env: Mapping[str, str] | None = None) -> str:
    """``vagrant ssh-config`` of the lab's nodes (default: every created machine), from ONE Vagrant process.

    Cached in ``<lab>/.coreos-lab/ssh-config`` until an up / reload / halt / destroy, or until the machine
    ids under ``.vagrant/machines`` change. A machine that is created but not running makes Vagrant fail
    the whole call: then the running ones are asked for instead (one ``status`` plus one ``ssh-config``).
    Raises VagrantError (with Vagrant's stderr) when nothing can be had.
    """
    lab = Path(lab_dir).resolve()
    wanted = list(nodes) if nodes else created_machines(lab)
    if not wanted:
        raise VagrantError(f"no machine of {lab} has been created yet", hint="run `coreos-lab up`")
    cache, key_file = _cache_paths(lab)
    key = json.dumps({"ids": machine_ids_key(lab), "nodes": wanted})
    with contextlib.suppress(OSError):
        if key_file.read_text(encoding="utf-8") == key and cache.read_text(encoding="utf-8").strip():
            return cache.read_text(encoding="utf-8")
    runner = VagrantLab(lab, env=env)
    proc = runner._run(["ssh-config", *wanted], timeout=300.0)
    text = proc.stdout
    if proc.returncode != 0 and not nodes:
        running = [m.name for m in runner.status() if m.running]
        if not running:
            raise VagrantError(f"no machine of {lab} is running", hint="run `coreos-lab up`")
        wanted = running
        key = json.dumps({"ids": machine_ids_key(lab), "nodes": wanted})
        proc = runner._run(["ssh-config", *wanted], timeout=300.0)
        text = proc.stdout
    if proc.returncode != 0 or not text.strip():
        raise explain_failure("ssh-config", proc.returncode, proc.stderr or "empty output")
    cache.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(cache, text, mode=0o600)
    atomic_write(key_file, key, mode=0o600)
    return text


def box_add(name: str, path: Path, *, force: bool = False, on_line: LineFn | None = None) -> None:
    """``vagrant box add --name NAME PATH`` (``--force`` replaces a box of that name)."""
    exe = vagrant_executable()
    argv = [exe, "box", "add", "--name", name, *(["--force"] if force else []), str(path)]
    env = dict(os.environ, VAGRANT_NO_COLOR="1", VAGRANT_CHECKPOINT_DISABLE="1")
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800, check=False)
    except subprocess.TimeoutExpired:
        raise VagrantError("vagrant box add did not finish within 30 minutes") from None
    if on_line:
        for line in proc.stdout.splitlines():
            on_line(line)
    if proc.returncode != 0:
        raise explain_failure("box add", proc.returncode, proc.stderr or proc.stdout)
