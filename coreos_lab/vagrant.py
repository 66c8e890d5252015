"""Vagrant, driven for a lab directory, and the lab's one cache of ``vagrant ssh-config``.

Every Vagrant process starts in :func:`_run`: in its own session, every stdout and stderr line handed to an
optional callback, stderr kept for the error, a timeout, and Ctrl-C handled so Vagrant can clean up
(exactly one SIGINT, a bounded wait, a second Ctrl-C kills it). What that buys over a bare subprocess:

- a failure is a :class:`~coreos_lab.errors.VagrantError` carrying the last lines of Vagrant's stderr,
  never an empty answer; a missing provider plugin (a long Ruby message) and a missing ``vagrant`` become
  one line naming the Debian and upstream package to install.
- commands take several machine names, so ``up core-01 core-02 --parallel`` boots them in one process.

python-vagrant's ``Vagrant`` cannot do that (its methods take one machine, ``halt``/``destroy`` do not stream,
its blocking calls kill Vagrant outright on Ctrl-C, and it has no timeout), so it is not used.

``ssh_config_text`` is the lab's one ssh-config cache (``.coreos-lab/ssh-config.json``, 0600, written
atomically): valid while the machine ids under ``.vagrant/machines`` are unchanged, dropped by every
up / reload / halt / destroy (:func:`invalidate`).

For example (on a real lab, so not run as a test)::

    lab = VagrantLab(Path("my-lab"), provider="libvirt")
    lab.up(on_line=print)
    [m.name for m in lab.status() if m.running]
    # -> ['core-01', 'core-02', 'core-03']
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from coreos_lab.errors import CoreosLabError, VagrantError, VagrantLostSSH
from coreos_lab.fsutil import atomic_write

LineFn = Callable[[str], None]

STATE_DIR: Final = ".coreos-lab"
SSH_CONFIG_CACHE: Final = "ssh-config.json"
_OLD_CACHES: Final = ("ssh-config", "ssh-config.key")  # what earlier versions cached there
_EVERY_MACHINE: Final = "*"  # the cache key of "every created machine (the running ones if some are not)"
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
# libvirt names two states differently from VirtualBox; report the VirtualBox names for both providers.
_STATE_ALIASES: Final = {("libvirt", "shutoff"): "poweroff", ("libvirt", "paused"): "saved"}
_PROVIDER_MISSING_RE: Final = re.compile(r"provider '([\w-]+)' could not be found", re.IGNORECASE)
_PROGRESS_RE: Final = re.compile(r"^(?:==> |    )([A-Za-z0-9][\w.-]*): (.*)$")
_ANSI_RE: Final = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Vagrant's words for the machine a parallel action failed on, and for an SSH connection lost or never made
# again while its boot steps ran (its communicator retries these five times, then gives up).
_FAILED_MACHINE_RE: Final = re.compile(r"executing the action on the '([A-Za-z0-9][\w.-]*)'\s+machine")
_LOST_SSH_RE: Final = re.compile(
    r"(?P<unreach>EHOSTUNREACH|no route to host)|(?P<reset>ECONNRESET|connection reset)"
    r"|(?P<banner>timeout during server version negotiating)|(?P<closed>SSH connection was unexpectedly closed)",
    re.IGNORECASE,
)
_LOST_SSH_REASONS: Final = {
    "unreach": "no route to host",
    "reset": "connection reset",
    "banner": "sshd's banner timed out",
    "closed": "connection closed",
}
_RUBY_FRAME_RE: Final = re.compile(r"^\s*(?:from\s+)?\S+\.rb:\d+:in [`'][^']*'(?::\s*(.*))?$")
DEFAULT_TIMEOUT: Final = 3600.0  # up / halt / destroy / reload / provision
QUERY_TIMEOUT: Final = 300.0  # status, ssh-config, ssh
BOX_ADD_TIMEOUT: Final = 1800.0
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


def vagrant_executable(path: str | None = None) -> str:
    """The ``vagrant`` binary on ``path`` (default $PATH), or VagrantError naming the package to install."""
    exe = shutil.which("vagrant", path=path)
    if not exe:
        raise VagrantError("vagrant is not installed (not found on PATH)", hint=INSTALL_HINTS["vagrant"])
    return exe


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


def parse_status(text: str) -> list[MachineState]:
    """``vagrant status --machine-readable`` (``timestamp,target,kind,data`` lines) -> machines, in its order.

    >>> parse_status("1,core-01,provider-name,libvirt\\n1,core-01,state,shutoff\\n1,,ui,info,done\\n")
    [MachineState(name='core-01', state='poweroff', provider='libvirt')]
    """
    machines: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        parts = line.split(",", 3)
        if len(parts) == 4 and parts[1] and parts[2] in ("provider-name", "state"):
            machines.setdefault(parts[1], {})[parts[2]] = parts[3].strip()
    out = []
    for name, info in machines.items():
        provider, state = info.get("provider-name", ""), info.get("state", "")
        out.append(MachineState(name, _STATE_ALIASES.get((provider, state), state), provider))
    return out


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
    machines = tuple(dict.fromkeys(_FAILED_MACHINE_RE.findall(text)))
    where = f" on {', '.join(machines)}" if machines else ""
    message = f"vagrant {command} failed (exit {exit_code}){where}: {tail}"
    lost = _LOST_SSH_RE.search(text)
    if lost is not None:
        return VagrantLostSSH(message, machines=machines, reason=_LOST_SSH_REASONS.get(lost.lastgroup or "", ""))
    return VagrantError(message)


def machine_ids_fingerprint(lab_dir: Path) -> str:
    """A hash of ``.vagrant/machines/*/*/id`` (names and contents): changes when machines are (re)created."""
    h = hashlib.sha256()
    for path in sorted((Path(lab_dir) / ".vagrant" / "machines").glob("*/*/id")):
        with contextlib.suppress(OSError):
            h.update(str(path.relative_to(lab_dir)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def created_machines(lab_dir: Path) -> list[str]:
    """Machines Vagrant has created in this lab (an ``id`` file exists), without running Vagrant."""
    names = {p.parent.parent.name for p in (lab_dir / ".vagrant" / "machines").glob("*/*/id") if p.read_bytes().strip()}
    return sorted(names)


def vagrant_env(base: Mapping[str, str] | None = None, provider: str | None = None) -> dict[str, str]:
    """The environment Vagrant runs with: ``base`` (default ours) without update checks and colours."""
    env = dict(os.environ if base is None else base)
    # Vagrant's own update checks and colours only slow down and garble machine-driven runs.
    env.setdefault("VAGRANT_NO_COLOR", "1")
    env.setdefault("VAGRANT_CHECKPOINT_DISABLE", "1")
    if provider:
        env.setdefault("VAGRANT_DEFAULT_PROVIDER", provider)
    return env


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
        self.env = vagrant_env(env, provider)
        self.timeout = timeout

    @property
    def parallel_capable(self) -> bool:
        """Whether this lab's provider can bring machines up in parallel (VirtualBox cannot)."""
        return (self.provider or "virtualbox") in PARALLEL_PROVIDERS

    # -- queries -------------------------------------------------------------------------------------
    def status(self) -> list[MachineState]:
        """Every machine of the Vagrantfile with its state (``running``, ``not_created``, ``poweroff``...)."""
        return parse_status(self._run(["status", "--machine-readable"], timeout=QUERY_TIMEOUT))

    def ssh(self, node: str, command: str, *, timeout: float = QUERY_TIMEOUT) -> str:
        """Run ``command`` on ``node`` through ``vagrant ssh`` and return stdout; raise on any failure."""
        return self._run(["ssh", node, "--command", command], what=f"ssh {node}", timeout=timeout)

    def ssh_config(self, nodes: Sequence[str] | None = None) -> str:
        """``vagrant ssh-config`` for the given (default: all created) nodes, cached (:func:`ssh_config_text`)."""
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
        self._change(args, on_line)

    def halt(self, nodes: Sequence[str] | None = None, *, force: bool = False, on_line: LineFn | None = None) -> None:
        self._change(["halt", *(nodes or []), *(["--force"] if force else [])], on_line)

    def destroy(self, nodes: Sequence[str] | None = None, *, on_line: LineFn | None = None) -> None:
        # Never --parallel: vagrant-libvirt's parallel destroys race to remove the networks they share
        # ("Network not found"), and a serial destroy takes ~1 s per machine anyway.
        self._change(["destroy", "--force", *(nodes or [])], on_line)

    def reload(
        self, nodes: Sequence[str] | None = None, *, provision: bool = False, on_line: LineFn | None = None
    ) -> None:
        self._change(["reload", *(nodes or []), *(["--provision"] if provision else [])], on_line)

    def suspend(self, nodes: Sequence[str] | None = None, *, on_line: LineFn | None = None) -> None:
        self._change(["suspend", *(nodes or [])], on_line)

    def resume(self, nodes: Sequence[str] | None = None, *, on_line: LineFn | None = None) -> None:
        self._change(["resume", *(nodes or [])], on_line)

    def snapshot(self, action: str, *args: str, on_line: LineFn | None = None) -> None:
        """``vagrant snapshot ACTION ARGS`` for every machine (``save NAME``, ``restore NAME``, ``delete NAME``)."""
        self._change(["snapshot", action, *args], on_line)

    def provision(self, nodes: Sequence[str] | None = None, *, on_line: LineFn | None = None) -> None:
        """Re-run the provisioners: copies each node's cloud-config again and applies it (the rendered provisioner)."""
        self._run(["provision", *(nodes or [])], on_line=on_line)

    # -- plumbing ------------------------------------------------------------------------------------
    def _change(self, args: list[str], on_line: LineFn | None) -> None:
        """A command that changes machines: afterwards (even a failed or interrupted one) ssh-config is re-read."""
        try:
            self._run(args, on_line=on_line)
        finally:
            invalidate(self.lab_dir)

    def _run(
        self,
        args: Sequence[str],
        *,
        what: str | None = None,
        timeout: float | None = None,
        on_line: LineFn | None = None,
    ) -> str:
        return _run(
            args,
            what=what or args[0],
            cwd=self.lab_dir,
            env=self.env,
            timeout=self.timeout if timeout is None else timeout,
            on_line=on_line,
        )


# -- the lab's ssh-config cache ------------------------------------------------------------------------
def _cache_path(lab_dir: Path) -> Path:
    return lab_dir / STATE_DIR / SSH_CONFIG_CACHE


def _cached(lab_dir: Path, fingerprint: str) -> dict[str, str]:
    """The cached configs by request, if they were written for these machine ids (else none)."""
    try:
        data = json.loads(_cache_path(lab_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    configs = data.get("configs") if isinstance(data, dict) and data.get("machine_ids") == fingerprint else None
    if not isinstance(configs, dict):
        return {}
    return {k: v for k, v in configs.items() if isinstance(k, str) and isinstance(v, str) and v.strip()}


def invalidate(lab_dir: Path | str) -> None:
    """Forget the lab's cached ssh-config (up / reload / halt / destroy do it themselves).

    The background process holding SSH connections made with a cached config (:mod:`coreos_lab.mux`) is
    stopped with it: a node that was powered off or rebooted keeps its address, so the next command would get
    the same process and its dead connections (seen after a node's power-off and `vagrant up`: "connection
    reset" for 30 s).
    """
    state = Path(lab_dir) / STATE_DIR
    _stop_muxes(state / SSH_CONFIG_CACHE)
    for name in (SSH_CONFIG_CACHE, *_OLD_CACHES):
        with contextlib.suppress(FileNotFoundError):
            (state / name).unlink()


def _stop_muxes(cache: Path) -> None:
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    configs = data.get("configs") if isinstance(data, dict) else None
    if not isinstance(configs, dict):
        return
    from coreos_lab.mux import MuxClient

    for text in {v for v in configs.values() if isinstance(v, str)}:
        for accept_new in (False, True):
            with contextlib.suppress(CoreosLabError, OSError):
                MuxClient(text, accept_new=accept_new).shutdown()


def ssh_config_text(lab_dir: Path, nodes: Sequence[str] | None = None, *, env: Mapping[str, str] | None = None) -> str:
    """``vagrant ssh-config`` of the lab's nodes (default: every created machine), from ONE Vagrant process.

    Cached in ``<lab>/.coreos-lab/ssh-config.json`` until an up / reload / halt / destroy, or until the
    machine ids under ``.vagrant/machines`` change. A machine that is created but not running makes Vagrant
    fail the whole call: then the running ones are asked for instead (one ``status`` plus one
    ``ssh-config``). Raises VagrantError (with Vagrant's stderr) when nothing can be had.
    """
    lab = Path(lab_dir).resolve()
    request = " ".join(nodes) if nodes else _EVERY_MACHINE
    fingerprint = machine_ids_fingerprint(lab)
    configs = _cached(lab, fingerprint)
    if request in configs:
        return configs[request]
    wanted = list(nodes) if nodes else created_machines(lab)
    if not wanted:
        raise VagrantError(f"no machine of {lab} has been created yet", hint="run `coreos-lab up`")
    vm = VagrantLab(lab, env=env)
    try:
        text = vm._run(["ssh-config", *wanted], timeout=QUERY_TIMEOUT)
    except VagrantError:
        if nodes:
            raise
        running = [m.name for m in vm.status() if m.running]
        if not running:
            raise VagrantError(f"no machine of {lab} is running", hint="run `coreos-lab up`") from None
        text = vm._run(["ssh-config", *running], timeout=QUERY_TIMEOUT)
    if not text.strip():
        raise explain_failure("ssh-config", 0, "empty output")
    configs[request] = text
    (lab / STATE_DIR).mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(_cache_path(lab), json.dumps({"machine_ids": fingerprint, "configs": configs}), mode=0o600)
    return text


def box_add(name: str, path: Path, *, force: bool = False, on_line: LineFn | None = None) -> None:
    """``vagrant box add --name NAME PATH`` (``--force`` replaces a box of that name)."""
    args = ["box", "add", "--name", name, *(["--force"] if force else []), str(path)]
    _run(args, what="box add", cwd=None, env=vagrant_env(), timeout=BOX_ADD_TIMEOUT, on_line=on_line)


# -- the one way a Vagrant process runs ----------------------------------------------------------------
def _run(
    args: Sequence[str],
    *,
    what: str,
    cwd: Path | None,
    env: Mapping[str, str],
    timeout: float,
    on_line: LineFn | None = None,
) -> str:
    """Run ``vagrant ARGS``; hand every stdout and stderr line to ``on_line``; return stdout.

    Raises VagrantError quoting stderr on a non-zero exit, and when ``timeout`` seconds pass (Vagrant is
    then killed). On Ctrl-C see :func:`_interrupt`; the KeyboardInterrupt is raised again afterwards.
    """
    emit: LineFn = on_line or (lambda _line: None)
    exe = vagrant_executable(env.get("PATH"))
    try:
        proc = subprocess.Popen(
            [exe, *args],
            cwd=cwd,
            env=dict(env),
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
    except OSError as exc:
        raise VagrantError(f"cannot run {exe}: {exc.strerror or exc}", hint=INSTALL_HINTS["vagrant"]) from None
    assert proc.stdout is not None  # noqa: S101 - a PIPE
    assert proc.stderr is not None  # noqa: S101 - a PIPE
    lock = threading.Lock()
    out: list[str] = []
    err: list[str] = []

    def pump(stream: IO[str], into: list[str]) -> None:
        for line in stream:
            into.append(line)
            with lock:
                emit(line.rstrip("\n"))

    reader = threading.Thread(target=pump, args=(proc.stderr, err), daemon=True)
    reader.start()
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        proc.kill()

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    try:
        pump(proc.stdout, out)
        code = proc.wait()
    except KeyboardInterrupt:
        _interrupt(proc, emit, lock)
        raise
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        timer.cancel()
        reader.join(timeout=5)
    if expired.is_set():
        raise VagrantError(f"vagrant {what} did not finish within {timeout:g}s")
    if code != 0:
        raise explain_failure(what, code, "".join(err) or "".join(out))
    return "".join(out)


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
