"""CLI commands that create and re-render a lab: ``init`` and ``render``; the check ``up`` runs first."""

from __future__ import annotations

import secrets
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from coreos_lab import config as config_mod
from coreos_lab.cli._common import JSON_OPTION, LAB_OPTION, Problems, emit_json, lab_dir, report_problem
from coreos_lab.config import LabConfig
from coreos_lab.errors import UsageError
from coreos_lab.pickup import LEGACY_USER_DATA_DIR, pickup_problems
from coreos_lab.redact import mask_token

if TYPE_CHECKING:  # render (jinja2, cryptography) and discovery (requests) load only when a command runs
    from coreos_lab.render import WriteResult


def parse_metadata_options(items: list[str]) -> dict[str, dict[str, str]]:
    """``["core-01=role=web", ...]`` -> ``{"core-01": {"role": "web"}}`` (values are checked by the config)."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        node, sep, rest = item.partition("=")
        key, sep2, value = rest.partition("=")
        if not (sep and sep2 and node and key):
            raise UsageError(f"--metadata wants NODE=key=value (e.g. core-01=role=web), got {item!r}")
        out.setdefault(node, {})[key] = value
    return out


def _bootstrap(bootstrap: str | None, discovery_url: str | None, endpoint: str | None) -> str:
    if bootstrap is None:
        if endpoint:
            return "self-hosted"
        return "discovery" if discovery_url else "static"
    if bootstrap == "static" and (discovery_url or endpoint):
        raise UsageError("--bootstrap static takes no --discovery-url or --discovery-endpoint")
    if bootstrap == "discovery" and endpoint:
        raise UsageError("--discovery-endpoint goes with --bootstrap self-hosted, not discovery")
    return bootstrap


def merge_paths(lab: Path, files: list[Path]) -> tuple[str, ...]:
    """``--ignition-merge`` files as coreos-lab.toml keeps them: relative to the lab when inside it, else absolute.

    >>> merge_paths(Path("/labs/a"), [Path("/labs/a/extra.ign"), Path("/srv/users.ign")])
    ('extra.ign', '/srv/users.ign')
    """
    base = lab.absolute()
    out = []
    for item in files:
        path = item.absolute()
        out.append(path.relative_to(base).as_posix() if base in path.parents else str(path))
    return tuple(out)


def _report(result: WriteResult, *, as_json: bool, verb: str) -> None:
    cfg = result.config
    for warning in result.warnings:
        report_problem(warning, label="warning")
    if as_json:
        data: dict[str, Any] = {
            "lab": str(result.lab_dir),
            "written": [str(p) for p in result.written],
            "removed": [str(p) for p in result.removed],
            "os": cfg.os,
            "channel": cfg.channel,
            "provider": cfg.provider,
            "bootstrap": cfg.bootstrap,
            # The token is a secret: shortened here, in full only in coreos-lab.toml (0600).
            "discovery_url": mask_token(cfg.discovery_url),
            "tls": cfg.tls,
            "provision": cfg.provision,
            "ignition_merge": [{"path": str(m.path), "sha256": m.sha256, "version": m.version} for m in result.merges],
            "nodes": [{"name": n.name, "ip": n.ip, "metadata": dict(n.metadata)} for n in cfg.nodes],
            "warnings": list(result.warnings),
            "user_data": result.user_data.as_dict() if result.user_data else None,
            "config_ign": _ignition_dict(result),
        }
        emit_json(data)
        return
    nodes = cfg.nodes
    span = nodes[0].name if len(nodes) == 1 else f"{nodes[0].name}..{nodes[-1].name}"
    typer.echo(
        f"{verb} {result.lab_dir}: {len(nodes)} node(s) {span}, {cfg.os} {cfg.channel}, {cfg.provider}, "
        f"bootstrap {cfg.bootstrap}"
        + (", etcd TLS on" if cfg.tls else "")
        + (", provisioned by Ignition" if cfg.provision == "ignition" else "")
    )
    base = result.lab_dir.resolve()
    for path in result.written:
        typer.echo(f"  wrote {_rel(path, base)}")
    legacy = result.lab_dir / LEGACY_USER_DATA_DIR
    for path in result.removed:
        if path == legacy:
            typer.echo(f"  removed {LEGACY_USER_DATA_DIR}/ (the old layout: Flatcar's box would upload it whole)")
        elif legacy in path.parents:
            typer.echo(f"  removed {_rel(path, base)} (the old layout)")
        else:
            typer.echo(f"  removed {_rel(path, base)}")
    if result.user_data is not None:
        merged = result.user_data
        typer.echo(f"  merged {_rel(merged.path, base)} into {merged.nodes} node configs: {merged.describe()}")
    for merge in result.merges:
        typer.echo(
            f"  merged {_rel(merge.path, base)} (spec {merge.version}) into every node's Ignition config "
            "(ignition.config.merge; read again at every render)"
        )
    if cfg.provision == "ignition":
        from coreos_lab import ignition

        typer.echo(f"  each node gets its Ignition config through {ignition.delivery(cfg.provider)}")
    if result.ignition is not None:
        ign = result.ignition
        typer.echo(
            f"  {_rel(ign.path, base)}: left for the box to hand to Ignition at first boot (spec {ign.version}, "
            f"{ign.size} bytes; {ign.delivery}; a changed one needs the nodes destroyed and brought up again)"
        )


def _report_out(result: WriteResult, *, as_json: bool) -> None:
    """What ``render --out DIR`` wrote: the Ignition config of every node, and the merge files in them."""
    if as_json:
        merges = [{"path": str(m.path), "sha256": m.sha256, "version": m.version} for m in result.merges]
        emit_json({"out": str(result.lab_dir), "written": [str(p) for p in result.written], "ignition_merge": merges})
        return
    from coreos_lab.ignition import SPEC_VERSION

    typer.echo(f"Wrote {len(result.written)} Ignition config(s) (spec {SPEC_VERSION}) to {result.lab_dir}")
    for path in result.written:
        typer.echo(f"  wrote {_rel(path, result.lab_dir.resolve())}")
    for merge in result.merges:
        typer.echo(f"  merged {merge.path} (spec {merge.version}) into each")


def _ignition_dict(result: WriteResult) -> dict[str, Any] | None:
    ign = result.ignition
    if ign is None:
        return None
    return {
        "path": str(ign.path),
        "sha256": ign.sha256,
        "bytes": ign.size,
        "version": ign.version,
        "note": ign.delivery,
    }


def _rel(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base))
    except ValueError:
        return str(path)


def init(
    directory: Path = typer.Argument(Path(), help="Lab directory to create (default: the current one)."),  # noqa: B008
    instances: int = typer.Option(3, "--instances", help="Number of nodes, 1..32."),
    channel: str = typer.Option("stable", "--channel", help="Release channel: stable, beta, alpha, lts."),
    os_name: str = typer.Option("flatcar", "--os", help="flatcar, or coreos (legacy dialect; boxes gone)."),
    provider: str = typer.Option("virtualbox", "--provider", help="virtualbox or libvirt."),
    box: str | None = typer.Option(None, "--box", help="Box name (default flatcar-<channel>; e.g. coreos-lab/lab)."),
    box_url: str | None = typer.Option(None, "--box-url", help="Box metadata URL (default: the channel's)."),
    box_version: str | None = typer.Option(None, "--box-version", help="Box version (default: current)."),
    memory: int = typer.Option(1024, "--memory", help="MB of memory per node (>= 512)."),
    cpus: int = typer.Option(1, "--cpus", help="vCPUs per node."),
    name_prefix: str = typer.Option("core", "--name-prefix", help="Node names are <prefix>-01, <prefix>-02, ..."),
    network: str = typer.Option(
        config_mod.DEFAULT_NETWORK, "--network", help="Private network CIDR; node i gets host address 100+i."
    ),
    bootstrap: str | None = typer.Option(
        None, "--bootstrap", help="static (default, offline), discovery (token service) or self-hosted."
    ),
    discovery_url: str | None = typer.Option(None, "--discovery-url", help="Reuse this discovery token URL."),
    discovery_service: str | None = typer.Option(
        None,
        "--discovery-service",
        envvar=config_mod.DISCOVERY_SERVICE_ENV,
        help=f"Discovery service for new tokens (default {config_mod.DISCOVERY_SERVICE}).",
    ),
    discovery_endpoint: str | None = typer.Option(
        None, "--discovery-endpoint", help="etcd with the v2 API holding self-hosted discovery tokens."
    ),
    metadata: list[str] = typer.Option(  # noqa: B008 - typer's way of declaring a repeatable option
        [], "--metadata", help="Node metadata NODE=key=value, repeatable (e.g. core-01=role=web)."
    ),
    use_tls: bool = typer.Option(
        False, "--tls", help="Create a lab CA and certificates: etcd speaks TLS with client certificates."
    ),
    provision: str = typer.Option(
        "cloud-config",
        "--provision",
        help="How nodes get their configuration at first boot: cloud-config (default) or ignition.",
    ),
    ignition_merge: list[Path] = typer.Option(  # noqa: B008 - typer's way of declaring a repeatable option
        [],
        "--ignition-merge",
        help="An Ignition config (spec 3.0.0-3.3.0) merged into every node's, repeatable; needs --provision ignition.",
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing lab."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Create a lab: coreos-lab.toml, Vagrantfile, config.rb and cloud-config/<node>.yaml.

    A user-data file (cloud-config) in the directory is merged into every node's cloud-config; a config.ign
    there is checked and left for the box to hand to Ignition. With --provision ignition the nodes get
    ignition/<node>.ign instead, and the lab takes neither file: the user's own Ignition comes in with
    --ignition-merge.
    """
    mode = _bootstrap(bootstrap, discovery_url, discovery_endpoint)
    draft = LabConfig(
        instances=instances,
        channel=channel,
        os=os_name,
        provider=provider,
        box=box,
        box_url=box_url,
        box_version=box_version,
        memory=memory,
        cpus=cpus,
        name_prefix=name_prefix,
        network=network,
        bootstrap=mode,
        discovery_url=discovery_url,
        # Unique per lab, so two static labs on one network cannot join each other's cluster.
        cluster_token=f"coreos-lab-{secrets.token_hex(4)}",
        metadata=parse_metadata_options(metadata),
        tls=use_tls,
        provision=provision,
        ignition_merge=merge_paths(directory, ignition_merge),
    )
    from coreos_lab import discovery
    from coreos_lab.render import init_lab

    result = init_lab(
        directory,
        draft,
        force=force,
        discovery_service=discovery_service,
        discovery_endpoint=discovery_endpoint,
        policy=discovery.RetryPolicy.from_env(),
    )
    _report(result, as_json=as_json, verb="Created lab")
    if not as_json:
        typer.echo(f"Next: cd {shlex.quote(str(directory))} && coreos-lab up")


def render(
    lab: Path | None = LAB_OPTION,
    provision: str | None = typer.Option(
        None, "--provision", help="With --out: ignition (the only format --out writes; the default there)."
    ),
    out: Path | None = typer.Option(  # noqa: B008
        None, "--out", help="Write only every node's Ignition config, as DIR/<node>.ign (for Terraform or a cloud)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Re-render Vagrantfile, config.rb and cloud-config/ from coreos-lab.toml (never fetches a new token).

    Merges the lab's user-data file again, checks its config.ign, and removes coreos-lab's files from an old
    user-data/ directory. An Ignition lab (provision = "ignition" in coreos-lab.toml) gets ignition/<node>.ign
    instead and reads its --ignition-merge files again. With --out DIR only the nodes' Ignition configs are
    written, there, and the lab is left as it is.
    """
    if out is None and provision is not None:
        raise UsageError(
            "--provision goes with --out DIR: a lab renders by the provision setting in coreos-lab.toml",
            hint='set provision = "ignition" or "cloud-config" there and render again, or init --force',
        )
    if out is not None and provision not in (None, "ignition"):
        raise UsageError(f"--out writes Ignition configs only (--provision ignition), got --provision {provision}")
    if out is not None:
        from coreos_lab.render import render_ignition_out

        _report_out(render_ignition_out(lab_dir(lab), out), as_json=as_json)
        return
    from coreos_lab.render import render_existing

    result = render_existing(lab_dir(lab))
    _report(result, as_json=as_json, verb="Rendered lab")


def refuse_unexpected_pickups(path: Path, cfg: LabConfig) -> None:
    """Before ``up`` boots anything: :class:`Problems` (one ``error:`` line per file Flatcar's box would pick up
    unexpectedly, a hint, exit 2) unless :func:`coreos_lab.pickup.pickup_problems` finds none."""
    problems = pickup_problems(path, cfg)
    if problems:
        raise Problems(problems, hint="run 'coreos-lab render' first (it merges and checks them), then 'coreos-lab up'")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the application."""
    app.command("init")(init)
    app.command("render")(render)
