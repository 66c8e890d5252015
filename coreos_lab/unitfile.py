"""systemd unit files as data: parse, validate, render, and convert to fleet's option lists.

A :class:`UnitFile` keeps every line of the text it was parsed from (comments, blank lines, line
continuations), so ``UnitFile.parse(text).to_text() == text``. Its options (section, name, value) are
what fleet works with: :meth:`UnitFile.to_fleet_options` gives fleet's API shape, and :attr:`UnitFile.hash`
is fleet's unit hash (SHA1 of fleet's own re-serialisation, verified against fleet v1.0.0 captures).

Values follow fleet's parser (go-systemd's deserializer), so hashes and option lists agree with fleet:
a value continued with a trailing backslash keeps the backslash and the newline (systemd joins them itself
when it reads the file on the node); surrounding whitespace is stripped.

>>> u = UnitFile.parse("[Unit]\\nDescription=hi\\n\\n[Service]\\nExecStart=/bin/true\\n", name="hi.service")
>>> u.get("Service", "ExecStart")
'/bin/true'
>>> u.hash
'f31751edb6ddb882af2e65bfdc2628824c03705b'
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final

from coreos_lab.errors import UnitFileError

# Sections systemd itself reads. Unknown sections are ignored by systemd with a warning, which in
# practice means a typo ([Sevice]) silently drops a whole section: we reject them. X- sections are
# systemd's sanctioned extension point (fleet's [X-Fleet] among them) and are always allowed.
KNOWN_SECTIONS: frozenset[str] = frozenset(
    {"Unit", "Install", "Service", "Socket", "Mount", "Automount", "Swap", "Timer", "Path", "Slice", "Scope"}
)
_KEY = re.compile(r"[A-Za-z0-9_.-]+")
# Go's unicode.IsSpace, which go-systemd trims with (str.strip would also eat \x1c-\x1f and change hashes).
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000" + "".join(map(chr, range(0x2000, 0x200B)))
# fleet's API re-parses units with go-systemd, which refuses lines of 2048 bytes or more.
FLEET_LINE_MAX = 2048


# ---- unit names: systemd's rules, the one home of them --------------------------------------------------------
UNIT_NAME_MAX = 255
UNIT_SUFFIXES = (
    ".service", ".socket", ".target", ".timer", ".path", ".mount", ".automount", ".swap", ".slice", ".scope", ".device",
)  # fmt: skip

# systemd's VALID_CHARS plus '@' (which may appear once, before the instance); '\' starts \xNN escapes.
_NAME_CHARS = re.compile(r"[A-Za-z0-9:_.\\-]+")
_GLOB_CHARS = re.compile(r"[A-Za-z0-9:_.\\@*?\[\]-]+")
_PATTERN_CHARS: Final = frozenset("*?[")


def is_pattern(name: str) -> bool:
    """Whether ``name`` is an fnmatch pattern rather than a unit name.

    >>> is_pattern("web@*.service"), is_pattern("web@1.service")
    (True, False)
    """
    return not _PATTERN_CHARS.isdisjoint(name)


def check_unit_name(name: str, *, allow_template: bool = True, allow_instance: bool = True) -> str:
    """Return ``name`` if it is a valid systemd unit name, else raise UnitFileError.

    The rules are systemd's: at most 255 characters of ``[A-Za-z0-9:_.\\-@]``, a known type suffix, and
    ``@`` at most once: ``name@.service`` is a template, ``name@instance.service`` an instance of one.

    >>> check_unit_name("hello@.service")
    'hello@.service'
    >>> check_unit_name("x;reboot.service")
    Traceback (most recent call last):
    ...
    coreos_lab.errors.UnitFileError: invalid unit name 'x;reboot.service': only letters, digits and :_.-\\@ are allowed
    """
    if not isinstance(name, str) or not name:
        raise UnitFileError("invalid unit name: empty")
    shown = repr(name if len(name) <= 80 else name[:77] + "...")
    if len(name) > UNIT_NAME_MAX:
        raise UnitFileError(f"invalid unit name {shown}: longer than {UNIT_NAME_MAX} characters")
    suffix = next((s for s in UNIT_SUFFIXES if name.endswith(s)), None)
    if suffix is None:
        raise UnitFileError(f"invalid unit name {shown}: it must end in one of {', '.join(UNIT_SUFFIXES)}")
    stem = name[: -len(suffix)]
    prefix, at, instance = stem.partition("@")
    if not prefix:
        raise UnitFileError(f"invalid unit name {shown}: nothing before the type suffix or '@'")
    for part in (prefix, instance) if at else (prefix,):
        if part and not _NAME_CHARS.fullmatch(part):
            raise UnitFileError(f"invalid unit name {shown}: only letters, digits and :_.-\\@ are allowed")
    if at and not allow_template and not instance:
        raise UnitFileError(f"invalid unit name {shown}: a template (name@.type) cannot be used here")
    if at and not allow_instance and instance:
        raise UnitFileError(f"invalid unit name {shown}: an instance (name@instance.type) cannot be used here")
    return name


def validate_unit_pattern(pattern: str) -> str:
    """A ``list-units`` glob: unit-name characters plus ``* ? [ ]``; anything else raises UnitFileError."""
    if not pattern or len(pattern) > UNIT_NAME_MAX or not _GLOB_CHARS.fullmatch(pattern):
        raise UnitFileError(f"invalid unit pattern {pattern[:80]!r}: use unit-name characters and * ? [ ]")
    return pattern


@dataclass(frozen=True, slots=True)
class UnitName:
    """A valid unit name, split the way systemd and fleet split it.

    ``foo@bar.service``: prefix ``foo``, instance ``bar``, suffix ``service``, template ``foo@.service``.
    """

    full: str
    prefix: str
    instance: str | None
    suffix: str

    @property
    def is_template(self) -> bool:
        return self.instance == ""

    @property
    def is_instance(self) -> bool:
        return bool(self.instance)

    @property
    def template(self) -> str | None:
        """The template this name instantiates (or is), e.g. ``foo@.service``; None for plain units."""
        return None if self.instance is None else f"{self.prefix}@.{self.suffix}"

    @property
    def stem(self) -> str:
        """The name without its suffix (fleet's and systemd's ``%N``)."""
        return self.full[: -len(self.suffix) - 1]


def validate_unit_name(name: str) -> UnitName:
    """Check ``name`` with systemd's rules (:func:`check_unit_name`) and split it.

    >>> validate_unit_name("web@1.service").template
    'web@.service'
    >>> validate_unit_name("web.servce")
    Traceback (most recent call last):
    ...
    coreos_lab.errors.UnitFileError: invalid unit name 'web.servce': it must end in one of ...
    """
    check_unit_name(name)  # one rule set for the whole project; raises UnitFileError
    stem, _, suffix = name.rpartition(".")
    prefix, at, instance = stem.partition("@")
    return UnitName(full=name, prefix=prefix, instance=instance if at else None, suffix=suffix)


@dataclass(frozen=True, slots=True)
class Option:
    """One ``Name=Value`` assignment. ``raw`` is the exact source text (None when built in code)."""

    section: str
    name: str
    value: str
    line: int = field(default=0, compare=False)
    raw: str | None = field(default=None, compare=False)

    def render(self) -> str:
        return self.raw if self.raw is not None else f"{self.name}={self.value}\n"

    def as_fleet(self) -> dict[str, str]:
        return {"section": self.section, "name": self.name, "value": self.value}


@dataclass(frozen=True, slots=True)
class Section:
    """One ``[Name]`` block: its options in file order, plus the raw text of every line for round-trips."""

    name: str
    options: tuple[Option, ...]
    header_raw: str | None = field(default=None, compare=False)
    # Comment and blank lines inside the block, each with the index of the option it precedes.
    trivia: tuple[tuple[int, str], ...] = field(default=(), compare=False)

    def render(self) -> str:
        parts = [self.header_raw if self.header_raw is not None else f"[{self.name}]\n"]
        pending = sorted(self.trivia, key=lambda item: item[0])  # stable: same-index lines keep file order
        t = 0
        for i, opt in enumerate(self.options):
            while t < len(pending) and pending[t][0] <= i:
                parts.append(pending[t][1])
                t += 1
            parts.append(opt.render())
        parts.extend(text for _, text in pending[t:])
        return "".join(parts)


def _chomp(line: str) -> str:
    line = line[:-1] if line.endswith("\n") else line
    return line[:-1] if line.endswith("\r") else line


def _err(name: str | None, line: int, message: str) -> UnitFileError:
    where = f"{name or 'unit file'}:{line}" if line else (name or "unit file")
    return UnitFileError(f"{where}: {message}")


@dataclass(frozen=True, slots=True)
class UnitFile:
    """A parsed unit file. Equality compares name and options, not comments or spacing."""

    sections: tuple[Section, ...]
    name: str | None = None
    leading: str = field(default="", compare=False)

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str, name: str | None = None) -> UnitFile:
        """Parse unit file text; raise UnitFileError (``name:line: why``) for what systemd would reject.

        ``name``, when given, is validated with :func:`validate_unit_name`.
        """
        if name is not None:
            validate_unit_name(name)
        if not isinstance(text, str):
            raise _err(name, 0, "unit file must be text")
        if "\x00" in text:
            raise _err(name, 0, "unit file contains a NUL byte")
        if not text.strip(_GO_SPACE):
            raise _err(name, 0, "unit file is empty")
        # Only \n ends a line (str.splitlines would also split on form feeds and Unicode separators).
        parts = text.split("\n")
        lines = [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
        sections: list[Section] = []
        leading: list[str] = []
        if lines[0].startswith("\ufeff"):  # systemd skips a UTF-8 byte order mark
            leading.append("\ufeff")
            lines[0] = lines[0][1:]
        cur_name: str | None = None
        cur_header = ""
        cur_opts: list[Option] = []
        cur_trivia: list[tuple[int, str]] = []

        def close() -> None:
            if cur_name is not None:
                sections.append(Section(cur_name, tuple(cur_opts), cur_header, tuple(cur_trivia)))

        i = 0
        while i < len(lines):
            raw = lines[i]
            lineno = i + 1
            body = _chomp(raw)
            stripped = body.strip(_GO_SPACE)
            i += 1
            if not stripped or stripped[0] in "#;":
                # Comment lines may be continued too (systemd and go-systemd both do this).
                while stripped and body.rstrip(" ").endswith("\\") and i < len(lines):
                    raw += lines[i]
                    body = _chomp(lines[i])
                    i += 1
                if cur_name is None:
                    leading.append(raw)
                else:
                    cur_trivia.append((len(cur_opts), raw))
                continue
            if stripped.startswith("["):
                if not stripped.endswith("]") or stripped.count("]") != 1:
                    raise _err(name, lineno, f"malformed section header {stripped[:60]!r}")
                sect = stripped[1:-1]
                if not sect or sect != sect.strip(_GO_SPACE) or "[" in sect:
                    raise _err(name, lineno, f"malformed section header {stripped[:60]!r}")
                if sect not in KNOWN_SECTIONS and not sect.startswith("X-"):
                    known = ", ".join(sorted(KNOWN_SECTIONS))
                    raise _err(
                        name, lineno, f"unknown section [{sect}] (systemd knows {known}; extensions must start with X-)"
                    )
                close()
                cur_name, cur_header, cur_opts, cur_trivia = sect, raw, [], []
                continue
            if cur_name is None:
                raise _err(name, lineno, f"assignment before any [Section] header: {stripped[:60]!r}")
            key, eq, rest = body.partition("=")
            key = key.strip(_GO_SPACE)
            if not eq:
                raise _err(name, lineno, f"missing '=' in {stripped[:60]!r}")
            if not key:
                raise _err(name, lineno, f"missing key before '=' in {stripped[:60]!r}")
            if not _KEY.fullmatch(key):
                raise _err(name, lineno, f"invalid key {key[:60]!r} (letters, digits, '_', '-', '.' only)")
            # Continuations, as go-systemd (fleet) reads them: the backslash and newline stay in the value;
            # a blank line or the end of the file ends the value.
            value_parts = [rest]
            cur = rest
            while cur.endswith("\\"):
                if i >= len(lines):
                    if raw.endswith("\n"):
                        value_parts.append("")
                    break
                nxt = _chomp(lines[i])
                if not nxt.strip(_GO_SPACE):
                    value_parts.append("")
                    break
                raw += lines[i]
                value_parts.append(nxt)
                cur = nxt
                i += 1
            value = "\n".join(value_parts)
            value = value.strip(_GO_SPACE) + "\n" if value.endswith("\n") else value.strip(_GO_SPACE)
            cur_opts.append(Option(cur_name, key, value, lineno, raw))
        close()
        if not sections:
            raise _err(name, 0, "no [Section] in unit file")
        return cls(tuple(sections), name, "".join(leading))

    @classmethod
    def from_options(cls, options: Iterable[Option | tuple[str, str, str]], name: str | None = None) -> UnitFile:
        """Build a unit from (section, name, value) triples, grouping sections the way fleet stores them."""
        if name is not None:
            validate_unit_name(name)
        order: list[str] = []
        grouped: dict[str, list[Option]] = {}
        for item in options:
            opt = item if isinstance(item, Option) else Option(*item)
            _check_option(opt, name)
            if opt.section not in grouped:
                order.append(opt.section)
                grouped[opt.section] = []
            grouped[opt.section].append(Option(opt.section, opt.name, opt.value))
        if not order:
            raise _err(name, 0, "unit has no options")
        return cls(tuple(Section(s, tuple(grouped[s])) for s in order), name)

    @classmethod
    def from_fleet_options(cls, options: Sequence[Mapping[str, object]], name: str | None = None) -> UnitFile:
        """Inverse of :meth:`to_fleet_options`: fleet's ``[{"section","name","value"}]`` -> UnitFile."""
        if not isinstance(options, Sequence) or isinstance(options, str | bytes):
            raise _err(name, 0, "fleet options must be a list")
        triples: list[tuple[str, str, str]] = []
        for n, o in enumerate(options):
            if not isinstance(o, Mapping):
                raise _err(name, 0, f"fleet option #{n} is not an object")
            s, k, v = o.get("section"), o.get("name"), o.get("value")
            if not (isinstance(s, str) and isinstance(k, str) and isinstance(v, str)):
                raise _err(name, 0, f"fleet option #{n} needs string section, name and value")
            triples.append((s, k, v))
        return cls.from_options(triples, name)

    # ---- reading --------------------------------------------------------------------------------------
    @property
    def options(self) -> tuple[Option, ...]:
        """Every option in file order."""
        return tuple(o for s in self.sections for o in s.options)

    def section_names(self) -> list[str]:
        """Distinct section names in order of first appearance."""
        return list(dict.fromkeys(s.name for s in self.sections))

    def get_all(self, section: str, key: str) -> list[str]:
        """All values of ``key`` in ``section`` (repeated sections included), in order."""
        return [o.value for o in self.options if o.section == section and o.name == key]

    def get(self, section: str, key: str, default: str | None = None) -> str | None:
        """The last value of ``key`` (systemd's rule for single-valued settings)."""
        values = self.get_all(section, key)
        return values[-1] if values else default

    def with_name(self, name: str) -> UnitFile:
        validate_unit_name(name)
        return UnitFile(self.sections, name, self.leading)

    # ---- writing --------------------------------------------------------------------------------------
    def to_text(self) -> str:
        """The unit as text: byte-identical to the parsed source; canonical for units built from options."""
        if all(s.header_raw is not None for s in self.sections):
            return self.leading + "".join(s.render() for s in self.sections)
        return fleet_serialize(self.options)

    def to_fleet_options(self) -> list[dict[str, str]]:
        """fleet's API shape: ``[{"section": ..., "name": ..., "value": ...}]`` in file order."""
        return [o.as_fleet() for o in self.options]

    @property
    def hash(self) -> str:
        """fleet's unit hash: SHA1 hex of fleet's serialisation of the options."""
        return unit_hash(self.options)

    def effective(self, section: str, key: str) -> list[str]:
        """The values systemd ends up with for a list setting: an empty assignment resets the list."""
        out: list[str] = []
        for value in self.get_all(section, key):
            out = [] if value == "" else [*out, value]
        return out

    def check_loadable(self, name: str | None = None) -> None:
        """Raise UnitFileError for what systemd refuses to load (its "Refusing." checks), by unit type.

        Services need ExecStart= (or ExecStop=/SuccessAction=) and may have several ExecStart= only with
        Type=oneshot; sockets need a Listen*= setting, timers an On*= setting, paths a Path*= setting.
        """
        uname = name or self.name
        if not uname:
            raise UnitFileError("unit file has no name to check it against")
        kind = validate_unit_name(uname).suffix
        label = uname

        def has_any(section: str, prefix: str) -> bool:
            return any(o.section == section and o.name.startswith(prefix) and o.value for o in self.options)

        if kind == "service":
            starts = self.effective("Service", "ExecStart")
            stops = self.effective("Service", "ExecStop")
            if not starts and not stops and not self.get("Service", "SuccessAction"):
                raise _err(label, 0, "service has no ExecStart= (systemd refuses to load it)")
            service_type = self.get("Service", "Type") or "simple"
            if len(starts) > 1 and service_type != "oneshot":
                raise _err(label, 0, f"several ExecStart= are only allowed with Type=oneshot (Type={service_type})")
        elif kind == "socket" and not has_any("Socket", "Listen"):
            raise _err(label, 0, "socket has no Listen*= setting (systemd refuses to load it)")
        elif kind == "timer" and not has_any("Timer", "On"):
            raise _err(label, 0, "timer has no On*= setting (systemd refuses to load it)")
        elif kind == "path" and not has_any("Path", "Path"):
            raise _err(label, 0, "path unit has no Path*= setting (systemd refuses to load it)")

    def check_fleet_limits(self) -> None:
        """Raise UnitFileError for what fleet's API would refuse beyond systemd's rules (long lines)."""
        for line_no, line in enumerate(fleet_serialize(self.options).split("\n"), 1):
            if len(line.encode()) >= FLEET_LINE_MAX:
                raise _err(self.name, line_no, f"line too long for fleet (max {FLEET_LINE_MAX - 1} bytes)")


def _check_option(opt: Option, name: str | None) -> None:
    if not opt.section or "]" in opt.section or "\n" in opt.section:
        raise _err(name, 0, f"invalid section name {opt.section!r}")
    if opt.section not in KNOWN_SECTIONS and not opt.section.startswith("X-"):
        raise _err(name, 0, f"unknown section [{opt.section}]")
    if not _KEY.fullmatch(opt.name):
        raise _err(name, 0, f"invalid key {opt.name[:60]!r} in [{opt.section}]")
    if "\x00" in opt.value:
        raise _err(name, 0, f"invalid character in value of {opt.name}")
    # A newline is only representable as a continuation (backslash before it).
    for piece in opt.value.split("\n")[:-1]:
        if not piece.endswith("\\"):
            raise _err(name, 0, f"value of {opt.name} has a newline without a continuation backslash")
    if opt.value != opt.value.strip(_GO_SPACE) and not opt.value.endswith("\\\n"):
        raise _err(name, 0, f"value of {opt.name} has leading or trailing whitespace")


def fleet_serialize(options: Iterable[Option]) -> str:
    """fleet's canonical text: sections grouped in order of first appearance, one blank line between."""
    order: list[str] = []
    grouped: dict[str, list[Option]] = {}
    for o in options:
        if o.section not in grouped:
            order.append(o.section)
            grouped[o.section] = []
        grouped[o.section].append(o)
    blocks = ["[" + s + "]\n" + "".join(f"{o.name}={o.value}\n" for o in grouped[s]) for s in order]
    return "\n".join(blocks)


def unit_hash(options: Iterable[Option]) -> str:
    """SHA1 hex of :func:`fleet_serialize` (what fleet shows in list-unit-files and keys /unit/<hash> by)."""
    return hashlib.sha1(fleet_serialize(options).encode("utf-8"), usedforsecurity=False).hexdigest()


# ---- [X-Fleet] --------------------------------------------------------------------------------------------

_DEPRECATED = {
    "X-ConditionMachineID": "MachineID",
    "X-ConditionMachineBootID": "MachineID",
    "X-ConditionMachineOf": "MachineOf",
    "X-ConditionMachineMetadata": "MachineMetadata",
    "X-Conflicts": "Conflicts",
}
_CURRENT = ("MachineID", "MachineOf", "MachineMetadata", "Conflicts", "Global", "Replaces")
_TRUE = {"true", "yes", "1", "on", "t"}
_FALSE = {"false", "no", "0", "off", "f"}


def split_multivalue(value: str) -> list[str]:
    """fleet's X-Fleet multi-values: ``"a=b" "c=d"`` -> ``["a=b", "c=d"]``; anything else is one value."""
    if not (len(value) >= 2 and value.startswith('"') and value.endswith('"')):
        return [value]
    out: list[str] = []
    buf: list[str] = []
    quoted = False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        elif ch == " " and not quoted:
            out.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    out.append("".join(buf))
    return out


def expand_specifiers(value: str, unit: UnitName | None) -> str:
    """fleet's subset of systemd specifiers in [X-Fleet]: %n %N %p %i."""
    if unit is None:
        return value
    out = value.replace("%n", unit.full).replace("%N", unit.stem).replace("%p", unit.prefix)
    return out.replace("%i", unit.instance or "")


@lru_cache(maxsize=512)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Go's path.Match syntax (fleet's Conflicts/Replaces globs) as a regex; ValueError if malformed."""
    out: list[str] = []
    i = 0
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\":
            i += 1
            if i >= n:
                raise ValueError("trailing backslash")
            out.append(re.escape(pattern[i]))
        elif c == "[":
            j = i + 1
            negate = j < n and pattern[j] == "^"
            if negate:
                j += 1
            items: list[str] = []
            first = True
            while True:
                if j >= n:
                    raise ValueError("unterminated character class")
                if pattern[j] == "]" and not first:
                    break
                first = False
                lo = pattern[j]
                if lo == "\\":
                    j += 1
                    if j >= n:
                        raise ValueError("trailing backslash in character class")
                    lo = pattern[j]
                elif lo in "-]":
                    raise ValueError("bad character class")
                j += 1
                hi = lo
                if j < n and pattern[j] == "-":
                    j += 1
                    if j >= n:
                        raise ValueError("unterminated range")
                    hi = pattern[j]
                    if hi == "\\":
                        j += 1
                        if j >= n:
                            raise ValueError("trailing backslash in range")
                        hi = pattern[j]
                    elif hi == "]":
                        raise ValueError("bad range")
                    j += 1
                    if hi < lo:
                        raise ValueError("inverted range")
                items.append(re.escape(lo) + ("-" + re.escape(hi) if hi != lo else ""))
            out.append("[" + ("^/" if negate else "") + "".join(items) + "]")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def glob_match(pattern: str, name: str) -> bool:
    """Go ``path.Match(pattern, name)`` semantics; a malformed pattern matches nothing (as in fleet).

    >>> glob_match("oneshot@*.service", "oneshot@1.service")
    True
    """
    try:
        return _glob_regex(pattern).fullmatch(name) is not None
    except ValueError:
        return False


def check_glob(pattern: str) -> str | None:
    """None when ``pattern`` is a valid Go glob, else why not."""
    try:
        _glob_regex(pattern)
    except ValueError as exc:
        return str(exc)
    return None


@dataclass(frozen=True, slots=True)
class XFleet:
    """The [X-Fleet] placement constraints of a unit (fleet v1.0.0 semantics).

    ``machine_metadata`` holds (key, value) pairs: several values for one key are OR-ed, different
    keys are AND-ed (see :meth:`metadata_requirements`). ``warnings`` lists deprecated spellings used.
    """

    machine_id: str | None = None
    machine_of: tuple[str, ...] = ()
    machine_metadata: tuple[tuple[str, str], ...] = ()
    conflicts: tuple[str, ...] = ()
    global_: bool = False
    replaces: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def is_constrained(self) -> bool:
        return bool(self.machine_id or self.machine_of or self.machine_metadata or self.conflicts or self.replaces)

    def metadata_requirements(self) -> dict[str, frozenset[str]]:
        """``{key: allowed values}``: a node must match one allowed value for every key."""
        req: dict[str, set[str]] = {}
        for k, v in self.machine_metadata:
            req.setdefault(k, set()).add(v)
        return {k: frozenset(v) for k, v in req.items()}

    @classmethod
    def from_unit(cls, unit: UnitFile, name: str | None = None) -> XFleet:
        """Read and validate the [X-Fleet] section of ``unit`` (named ``name`` or ``unit.name``).

        Raises UnitFileError for unknown keys and for combinations fleet refuses.
        """
        uname = name or unit.name
        parsed = validate_unit_name(uname) if uname else None
        label = uname or "unit"
        values: dict[str, list[str]] = {k: [] for k in _CURRENT}
        warnings: list[str] = []
        for opt in unit.options:
            if opt.section != "X-Fleet":
                continue
            key = opt.name
            if key in _DEPRECATED:
                warnings.append(f"{label}: [X-Fleet] {key} is deprecated, use {_DEPRECATED[key]}")
                key = _DEPRECATED[key]
            elif key not in _CURRENT:
                raise _err(label, opt.line, f"unrecognized requirement in [X-Fleet] section: {opt.name!r}")
            values[key].extend(expand_specifiers(v, parsed) for v in split_multivalue(opt.value))

        machine_ids = [v for v in values["MachineID"] if v]
        if len(set(machine_ids)) > 1:
            warnings.append(f"{label}: several MachineID values, fleet uses the first ({machine_ids[0]})")
        metadata: list[tuple[str, str]] = []
        for pair in values["MachineMetadata"]:
            k, eq, v = pair.partition("=")
            # fleet silently ignores malformed pairs, which turns a typo into "run anywhere": refuse instead.
            if not eq or not k or not v or "=" in v:
                raise _err(label, 0, f"MachineMetadata value {pair!r} is not KEY=VALUE")
            metadata.append((k, v))
        global_ = False
        for raw in values["Global"]:
            low = raw.lower()
            if low not in _TRUE | _FALSE:
                raise _err(label, 0, f"Global={raw!r} is not a boolean (true/false)")
            global_ = low in _TRUE  # last value wins, as in fleet
        for key in ("Conflicts", "Replaces"):
            for pattern in values[key]:
                why = check_glob(pattern)
                if why or not pattern:
                    raise _err(label, 0, f"{key}={pattern!r} is not a valid glob ({why or 'empty'})")
        for peer in values["MachineOf"]:
            if parsed is not None or "%" not in peer:
                validate_unit_name(peer)
        xf = cls(
            machine_id=machine_ids[0] if machine_ids else None,
            machine_of=tuple(dict.fromkeys(values["MachineOf"])),
            machine_metadata=tuple(dict.fromkeys(metadata)),
            conflicts=tuple(dict.fromkeys(values["Conflicts"])),
            global_=global_,
            replaces=tuple(dict.fromkeys(values["Replaces"])),
            warnings=tuple(warnings),
        )
        xf.validate(label)
        return xf

    def validate(self, label: str = "unit") -> None:
        """Refuse the combinations fleet refuses (fleet's api.ValidateOptions, plus Replaces rules)."""
        for peer in self.machine_of:
            for pattern in self.conflicts:
                if glob_match(pattern, peer):
                    raise UnitFileError(
                        f"{label}: unresolvable requirements: MachineOf {peer!r} matches Conflicts {pattern!r}"
                    )
            for pattern in self.replaces:
                if glob_match(pattern, peer):
                    raise UnitFileError(
                        f"{label}: unresolvable requirements: MachineOf {peer!r} matches Replaces {pattern!r}"
                    )
        rules = [
            (self.machine_id is not None and bool(self.machine_of), "MachineID cannot be used with MachineOf"),
            (self.machine_id is not None and bool(self.conflicts), "MachineID cannot be used with Conflicts"),
            (self.machine_id is not None and self.global_, "MachineID cannot be used with Global"),
            (self.global_ and bool(self.machine_of), "Global cannot be used with MachineOf"),
            (self.global_ and bool(self.conflicts), "Global cannot be used with Conflicts"),
            (self.global_ and bool(self.replaces), "Global cannot be used with Replaces"),
            (bool(self.conflicts) and bool(self.replaces), "Conflicts cannot be used with Replaces"),
        ]
        for bad, why in rules:
            if bad:
                raise UnitFileError(f"{label}: [X-Fleet] {why}")


# ---- the unit file that carries a unit ------------------------------------------------------------------------------
def file_name(unit: str) -> str:
    """The unit file that carries ``unit``: itself, or its template for an instance (as fleet did).

    >>> file_name("hello@1.service")
    'hello@.service'

    A bare template cannot run, so it is refused (UnitFileError, exit 2).
    """
    parsed = validate_unit_name(unit)
    if parsed.is_template:
        raise UnitFileError(
            f"{unit} is a template: deploy instances of it instead, e.g. {parsed.prefix}@1.{parsed.suffix}"
        )
    return parsed.template if parsed.template is not None else unit


def load_unit(text: str, name: str) -> tuple[UnitFile, XFleet]:
    """Parse and validate a unit file and its [X-Fleet] section (UnitFileError, exit 2, on any problem)."""
    unit = UnitFile.parse(text, name=name)
    file_name(name)
    return unit, XFleet.from_unit(unit)
