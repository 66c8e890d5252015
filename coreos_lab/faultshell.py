"""The fault lab's node-side command lines (pure: strings in, strings out; :mod:`coreos_lab.fault` runs them).

Every line is a POSIX shell line with each argument quoted (``shlex``), meant to run as root through the
runner's ``sudo -n``. They need what a Flatcar node has: ``iptables`` (or ``nft``), ``tc`` (iproute2),
``systemctl`` and ``systemd-run``, ``grep``; no Python. A fault undoes itself by a word its record keeps
(``iptables``, ``nft``, ``tc IFACE``, ``unit NAME``, see :func:`undo_line`), never a stored command line.

>>> undo_line("0a1b2c3d", "tc eth1")
"if tc qdisc show dev eth1 2>/dev/null | grep -q '^qdisc prio fa17: root'; then tc qdisc del dev eth1 root; fi"
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from coreos_lab.errors import CoreosLabError

if TYPE_CHECKING:
    from coreos_lab.runner import CommandResult

CHAIN_PREFIX: Final = "COREOS-LAB-FAULT-"  # + 8 hex digits: 25 characters, iptables allows 28
NFT_PREFIX: Final = "coreos_lab_fault_"
TIMER_PREFIX: Final = "coreos-lab-fault-heal-"
QDISC: Final = "fa17"  # our prio root's handle: how heal tells our root qdisc from anyone else's
NETEM: Final = "fa18"
# prio's own default map, which uses bands 1-3 only: band 4 (netem) gets nothing but what our filters send.
PRIOMAP: Final = ("1", "2", "2", "2", "1", "2", "0", "0", "1", "1", "1", "1", "1", "1", "1", "1")
# The etcd unit, by what runs it: Flatcar and the lab box (etcd-member), Debian's package (the nspawn nodes),
# Container Linux's etcd2.
ETCD_UNITS: Final = ("etcd-member.service", "etcd.service", "etcd2.service")
# Programs live in /usr/sbin and /sbin, which a login user's PATH may lack (Debian's does).
PATH_PREFIX: Final = 'PATH="$PATH:/usr/sbin:/sbin"; export PATH; '
IFACE_RE: Final = re.compile(r"^[A-Za-z0-9_.-]{1,15}\Z")
_ADDR_RE: Final = re.compile(r"^\d+:\s+([^\s@]+)(?:@\S+)?\s+inet\s+(\d+\.\d+\.\d+\.\d+)/")
_TC_STEPS: Final = {10: "prio qdisc (sch_prio)", 11: "netem qdisc (sch_netem)", 12: "u32 filter (cls_u32)"}


# ---- partitions, netem, kills, timers -----------------------------------------------------------------------------
def chain_name(fault_id: str) -> str:
    return CHAIN_PREFIX + fault_id


def nft_table(fault_id: str) -> str:
    return NFT_PREFIX + fault_id


def iptables_apply(chain: str, ips: Sequence[str]) -> str:
    """Our chain dropping everything from and to ``ips``, jumped to first from INPUT and OUTPUT.

    >>> iptables_apply("C", ["10.0.0.2"])
    'iptables -w -N C && iptables -w -A C -s 10.0.0.2 -j DROP && iptables -w -A C -d 10.0.0.2 -j DROP && \
iptables -w -I INPUT 1 -j C && iptables -w -I OUTPUT 1 -j C'
    """
    ipt = ["iptables", "-w"]
    steps = [[*ipt, "-N", chain]]
    for ip in ips:
        steps += [[*ipt, "-A", chain, "-s", ip, "-j", "DROP"], [*ipt, "-A", chain, "-d", ip, "-j", "DROP"]]
    steps += [[*ipt, "-I", "INPUT", "1", "-j", chain], [*ipt, "-I", "OUTPUT", "1", "-j", chain]]
    return " && ".join(shlex.join(s) for s in steps)


def iptables_undo(chain: str) -> str:
    """Remove our jumps and chain; succeeds when they are gone already (a reboot, the timer)."""
    ipt, c = "iptables -w", shlex.quote(chain)
    return (
        f"while {ipt} -D INPUT -j {c} 2>/dev/null; do :; done; "
        f"while {ipt} -D OUTPUT -j {c} 2>/dev/null; do :; done; "
        f"if {ipt} -n -L {c} >/dev/null 2>&1; then {ipt} -F {c} && {ipt} -X {c}; fi"
    )


def nft_apply(table: str, ips: Sequence[str]) -> str:
    """The same drops as :func:`iptables_apply`, as an nftables table of ours (a node without iptables)."""
    nft = ["nft", "add"]
    elements = "{ " + ", ".join(ips) + " }"
    steps = [[*nft, "table", "inet", table]]
    for chain, hook, match in (("input", "input", "saddr"), ("output", "output", "daddr")):
        steps.append([*nft, "chain", "inet", table, chain, f"{{ type filter hook {hook} priority -10 ; }}"])
        steps.append([*nft, "rule", "inet", table, chain, "ip", match, elements, "drop"])
    return " && ".join(shlex.join(s) for s in steps)


def nft_undo(table: str) -> str:
    t = shlex.quote(table)
    return f"if nft list table inet {t} >/dev/null 2>&1; then nft delete table inet {t}; fi"


def netem_args(*, delay_ms: float | None = None, jitter_ms: float = 0.0, loss: float | None = None) -> list[str]:
    """netem's arguments.

    >>> netem_args(delay_ms=200, jitter_ms=20), netem_args(loss=12.5)
    (['delay', '200ms', '20ms'], ['loss', '12.5%'])
    """
    args: list[str] = []
    if delay_ms is not None:
        args += ["delay", f"{delay_ms:g}ms", *([f"{jitter_ms:g}ms"] if jitter_ms else [])]
    if loss is not None:
        args += ["loss", f"{loss:g}%"]
    return args


def netem_apply(iface: str, ips: Sequence[str], args: Sequence[str]) -> str:
    """prio root, netem in band 4, one u32 filter per peer address; each step exits with its own code (10-12)
    so that a missing kernel module is named (see ``_TC_STEPS``)."""
    dev = ["dev", iface]
    steps = [
        (["tc", "qdisc", "add", *dev, "root", "handle", f"{QDISC}:", "prio", "bands", "4", "priomap", *PRIOMAP], 10),
        (["tc", "qdisc", "add", *dev, "parent", f"{QDISC}:4", "handle", f"{NETEM}:", "netem", *args], 11),
    ]
    for ip in ips:
        match = ["u32", "match", "ip", "dst", f"{ip}/32", "flowid", f"{QDISC}:4"]
        steps.append((["tc", "filter", "add", *dev, "parent", f"{QDISC}:", "protocol", "ip", "prio", "1", *match], 12))
    return "; ".join(f"{shlex.join(argv)} || exit {code}" for argv, code in steps)


def netem_undo(iface: str) -> str:
    """Delete the root qdisc only when it is ours (handle ``fa17:``)."""
    dev = shlex.quote(iface)
    mark = shlex.quote(f"^qdisc prio {QDISC}: root")
    return f"if tc qdisc show dev {dev} 2>/dev/null | grep -q {mark}; then tc qdisc del dev {dev} root; fi"


def kill_command(unit: str) -> str:
    """SIGKILL the unit's main process and print its PID (exit 3: it has none)."""
    u = shlex.quote(unit)
    return (
        f"p=$(systemctl show -p MainPID --value {u}) || exit 1; "
        '[ "${p:-0}" != 0 ] || exit 3; '
        f'systemctl kill --kill-who=main --signal=SIGKILL {u} && echo "$p"'
    )


def start_unit(unit: str) -> str:
    """Start the unit unless systemd has restarted it already or is restarting it; says which. Never waits.

    A start job is queued (``--no-block``), not waited for: etcd-member's start took over a minute on a busy
    software-emulated node after its etcd was killed, and a heal undoes a fault, it does not wait out a boot.
    """
    u = shlex.quote(unit)
    return (  # no $: the line also runs from a transient systemd timer, which would expand it (undo_line)
        f"if systemctl is-active --quiet {u}; then echo running; "
        f"elif systemctl is-active {u} | grep -qx -e activating -e reloading; then echo restarting; "
        f"else systemctl start --no-block {u} && echo started; fi"
    )


def timer_command(fault_id: str, seconds: float, undo: str) -> str:
    """A transient systemd timer on the node that runs ``undo`` after ``seconds``.

    systemd expands ``$VAR`` (and a unit file's ``%`` specifiers) in what it executes: the undo lines are built
    without either, and this refuses one that has them.
    """
    if "$" in undo or "%" in undo:
        raise ValueError(f"undo line unsafe for systemd: {undo!r}")
    return shlex.join(
        [
            "systemd-run",
            "--quiet",
            "--collect",
            f"--unit={TIMER_PREFIX}{fault_id}",
            f"--on-active={max(1, round(seconds * 1000))}ms",
            "--timer-property=AccuracySec=100ms",  # a timer's default accuracy is a minute
            f"--description=coreos-lab: heal fault {fault_id}",
            "/bin/sh",
            "-c",
            undo,
        ]
    )


def cancel_timer(fault_id: str) -> str:
    return f"systemctl stop {TIMER_PREFIX}{fault_id}.timer >/dev/null 2>&1; true"


# What one command learns of a node: programs, addresses (-> interface), where its SSH comes from, etcd units.
DETECT: Final = (
    PATH_PREFIX + 'for p in iptables nft tc systemd-run; do command -v "$p" >/dev/null 2>&1 && echo "have $p"; done; '
    'echo "ssh ${SSH_CONNECTION%% *}"; ip -4 -o addr show 2>/dev/null; '
    f"for u in {' '.join(ETCD_UNITS)}; do "
    'echo "unit $u $(systemctl is-active "$u" 2>/dev/null)"; done; true'
)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What :data:`DETECT` found on one node."""

    programs: frozenset[str] = frozenset()
    addresses: Mapping[str, str] = field(default_factory=dict)  # IPv4 address -> interface
    ssh_from: str = ""
    units: Mapping[str, str] = field(default_factory=dict)  # etcd unit -> is-active state

    @property
    def etcd_unit(self) -> str | None:
        return next((u for u in ETCD_UNITS if self.units.get(u) in ("active", "activating", "reloading")), None)


def parse_detect(stdout: str) -> NodeInfo:
    """What :data:`DETECT` printed, as data (an address line that is not ``ip -o``'s is ignored).

    >>> info = parse_detect("have tc\\nssh 10.0.2.2\\n3: eth1    inet 192.168.56.101/24 brd x scope global eth1\\n"
    ...                     "unit etcd-member.service active\\n")
    >>> sorted(info.programs), dict(info.addresses), info.ssh_from, info.etcd_unit
    (['tc'], {'192.168.56.101': 'eth1'}, '10.0.2.2', 'etcd-member.service')
    """
    programs: set[str] = set()
    addresses: dict[str, str] = {}
    units: dict[str, str] = {}
    ssh_from = ""
    for line in stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word == "have":
            programs.add(rest.strip())
        elif word == "ssh":
            ssh_from = rest.strip()
        elif word == "unit":
            name, _, state = rest.partition(" ")
            units[name] = state.strip()
        elif m := _ADDR_RE.match(line):
            addresses.setdefault(m.group(2), m.group(1))
    return NodeInfo(frozenset(programs), addresses, ssh_from, units)


# ---- a fault's undo, by the word its record keeps -----------------------------------------------------------------
UNDO_RE: Final = re.compile(r"^(iptables|nft|tc [A-Za-z0-9_.-]{1,15}|unit \S{1,255})\Z")


def undo_line(fault_id: str, word: str) -> str:
    """The line that undoes fault ``fault_id`` on a host where its record says ``word``."""
    if word == "iptables":
        return iptables_undo(chain_name(fault_id))
    if word == "nft":
        return nft_undo(nft_table(fault_id))
    if word.startswith("tc "):
        return netem_undo(word[3:])
    if word.startswith("unit "):
        return start_unit(word[5:])
    raise ValueError(f"no undo for {word!r}")


def undone(fault_id: str, word: str, stdout: str) -> str:
    """What :func:`undo_line` did, in words."""
    if word == "iptables":
        return f"removed iptables chain {chain_name(fault_id)}"
    if word == "nft":
        return f"removed nftables table {nft_table(fault_id)}"
    if word.startswith("tc "):
        return f"removed the netem qdisc on {word[3:]}"
    unit = word[5:]
    if stdout == "running":
        return f"{unit} was running again (systemd restarted it)"
    if stdout == "restarting":
        return f"{unit} is being restarted by systemd"
    return f"asked systemd to start {unit}"


def _tail(result: CommandResult) -> str:
    lines = [ln.strip() for ln in (result.stderr or result.stdout).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def explain(host: str, what: str, result: CommandResult) -> CoreosLabError:
    """One line for a failed node-side step: a sudo that wants a password, a kernel without netem, ..."""
    text = result.stderr + result.stdout
    if "sudo:" in text and "password" in text:
        return CoreosLabError(f"{host}: sudo asks for a password; faults run as root through sudo -n")
    step = _TC_STEPS.get(result.exit_code) if what in ("delay", "loss") else None
    if step and "unknown" in text.lower():
        return CoreosLabError(
            f"{host}: the kernel has no {step}: {_tail(result)}",
            hint="modprobe sch_prio sch_netem cls_u32 on the node; nspawn nodes share the host's kernel",
        )
    if step and "Exclusivity" in text:
        return CoreosLabError(f"{host}: the interface already has a root qdisc that is not ours ({_tail(result)})")
    return CoreosLabError(f"{host}: {what} failed (exit {result.exit_code}): {_tail(result)}")
