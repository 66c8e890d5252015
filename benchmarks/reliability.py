"""Reliability figures: the bad-input campaigns and the repository's fault-injection tests, as one tally.

Campaigns: the same hypothesis strategies and case runners as tests/campaigns (targets.py), run here with
``--examples`` cases per target (default 200). Per target: cases tried, accepted, clean errors, tracebacks
(must be 0), partial files (must be 0), seconds.

Faults: the existing tests that inject a fault (a node or etcd member stopped, an SSH connection killed
mid-command, a discovery service refused/slow/500/garbage, a Ctrl-C or a failing rename during a write, a
changed host key, a foreign certificate) are selected by name with ``pytest -k`` and run in a subprocess;
a small plugin writes each test's outcome as JSON, summarised here: faults injected (tests run) and
survived (tests passed), per area.
The nspawn modules (containers booted as nodes) run whole, only with ``--faults all``; VMs never.

    .venv/bin/python benchmarks/reliability.py [--examples 200] [--faults none|fast|all] [--json]

Exit status 1 when a campaign saw a traceback or a partial file, or a fault test failed.
Network: loopback only (targets.loopback_only guards every campaign case).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Fault-injection tests by area (names as in the repository; a name that no longer exists simply counts 0).
FAULT_TESTS: dict[str, tuple[str, ...]] = {
    "node down / dead endpoint": (
        "test_cli_exec_reports_a_dead_node_and_the_others",
        "test_run_all_with_one_endpoint_dead",
        "test_node_down_sets_bit_1_and_its_units_bit_4",
        "test_node_down_then_reconcile_moves_its_units",
        "test_units_across_nodes_and_a_down_node",
        "test_reconcile_moves_units_off_a_dead_node_and_then_has_nothing_to_do",
        "test_unit_on_a_dead_node_moves_and_the_stale_copy_is_stopped_when_seen",
        "test_undeploy_with_a_target_down_keeps_an_inactive_record_that_reconcile_finishes",
        "test_probe_falls_back_to_lab_config_and_reports_down_nodes",
    ),
    "ssh connection dropped / hung": (
        "test_connection_dropped_mid_command_then_reconnect",
        "test_mux_replaces_a_dead_connection",
        "test_timeout_is_clear_and_the_runner_survives",
        "test_connection_refused_is_one_line",
        "test_refused_forward_target_keeps_the_connection",
    ),
    "etcd member(s) stopped": (
        "test_cluster_health_one_down_keeps_quorum_two_down_loses_it",
        "test_one_member_of_three_down_keeps_quorum_and_is_not_bit_2",
        "test_status_two_etcd_members_stopped_is_bit_2",
        "test_two_members_down_is_bit_2_only",
        "test_etcd_cluster_on_nodes_survives_one_member_stop",
        "test_update_record_retries_lost_races",
    ),
    "discovery down / slow / 500 / garbage": (
        "test_500_is_retried_then_succeeds",
        "test_persistent_500_gives_up_after_attempts",
        "test_slow_answer_times_out",
        "test_refused_port",
        "test_garbage_answers",
    ),
    "interrupted or failing writes": (
        "test_interrupted_write_is_undone",
        "test_interrupted_tls_init_leaves_nothing",
        "test_failed_write_leaves_nothing_behind",
        "test_failed_write_removes_directories_it_created",
    ),
    "untrusted peers (host keys, certificates)": (
        "test_changed_host_key_is_always_an_error",
        "test_cli_changed_key_is_a_hard_error_even_with_accept_new",
        "test_key_known_only_under_another_type_counts_as_changed",
        "test_no_client_cert_is_refused",
        "test_certificate_from_another_ca_is_refused",
    ),
}


def run_campaigns(examples: int) -> dict[str, dict[str, Any]]:
    os.environ["COREOS_LAB_CAMPAIGN_EXAMPLES"] = str(examples)
    os.environ["COREOS_LAB_CAMPAIGN_RANDOM"] = "1"  # new cases each run (the test suite replays fixed ones)
    from tests.campaigns import targets
    from tests.campaigns import test_campaigns as campaigns

    targets.RAISE_ON_DEFECT = False  # count every generated case; do not stop (and shrink) at the first defect
    results: dict[str, dict[str, Any]] = {}
    try:
        for name, calls in campaigns.CAMPAIGNS.items():
            targets.reset_tally()
            targets.HINTLESS.clear()
            start = time.perf_counter()
            first_defect = None
            for call in calls:
                try:
                    call()
                except Exception as exc:  # a defect hypothesis re-raised (the tally has the counts)
                    first_defect = first_defect or " ".join(str(exc).split())[:300]
            tally = targets.TALLY[name]
            results[name] = {
                "cases": tally.cases,
                "accepted": tally.ok,
                "clean_errors": tally.clean,
                "tracebacks": tally.tracebacks,
                "partial_files": tally.partial,
                "seconds": round(time.perf_counter() - start, 2),
                "defects": dict(sorted(tally.signatures.items())),
                "errors_without_offline_hint": len(targets.HINTLESS) if name == "discovery" else None,
                "first_defect": first_defect or (" ".join(tally.samples[0].split())[-400:] if tally.samples else None),
            }
    finally:
        targets.cleanup()
    return results


# A pytest plugin written next to the JSON it produces: one record per test (its outcome), nothing else.
_PLUGIN = """
import json, os
_records = {}
def pytest_runtest_logreport(report):
    name = report.nodeid.split("::")[-1].split("[")[0]
    key = report.nodeid
    if report.when == "call" or report.outcome != "passed":
        _records.setdefault(key, {"name": name, "outcome": report.outcome})
        if report.outcome == "failed":
            _records[key]["outcome"] = "failed"
def pytest_sessionfinish(session):
    with open(os.environ["COREOS_LAB_FAULT_JSON"], "w") as fh:
        json.dump(list(_records.values()), fh)
"""


def _pytest_outcomes(args: list[str], tmp: Path, tag: str) -> tuple[list[tuple[str, str]], int, str]:
    """Run pytest with the JSON plugin; ``[(test name, outcome)]``, exit code, last output line."""
    json_path = tmp / f"{tag}.json"
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "cl_fault_report", *args]
    env = {**os.environ, "COREOS_LAB_FAULT_JSON": str(json_path)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False, env=env)
    records = json.loads(json_path.read_text()) if json_path.exists() else []
    tail = proc.stdout.strip().splitlines()[-1:] or [proc.stderr.strip()[-200:]]
    return [(r["name"], r["outcome"]) for r in records], proc.returncode, tail[0]


def run_faults(scope: str) -> dict[str, Any]:
    names = [n for group in FAULT_TESTS.values() for n in group]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cl-reliability-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "cl_fault_report.py").write_text(_PLUGIN)
        fast = ["-m", "not nspawn and not vm", "-k", " or ".join(names), "tests/unit", "tests/integration"]
        cases, code, tail = _pytest_outcomes(fast, tmp, "fast")
        tails = [tail]
        if scope == "all":
            # The nspawn modules run whole: their tests build on each other's state (a deploy, then a node
            # powered off), so a -k selection would break them. Only the fault tests are counted.
            modules = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "tests" / "nspawn").glob("test_*.py"))]
            modules = [m for m in modules if any(n in (ROOT / m).read_text() for n in names)]
            more, more_code, more_tail = _pytest_outcomes(modules, tmp, "nspawn")
            cases += more
            code = code or more_code
            tails.append(more_tail)
    seconds = round(time.perf_counter() - start, 1)
    areas: dict[str, dict[str, int]] = {}
    for area, group in FAULT_TESTS.items():
        mine = [s for n, s in cases if n in group]
        areas[area] = {
            "injected": sum(1 for s in mine if s != "skipped"),
            "survived": sum(1 for s in mine if s == "passed"),
            "skipped": sum(1 for s in mine if s == "skipped"),
        }
    return {
        "scope": scope,
        "areas": areas,
        "injected": sum(a["injected"] for a in areas.values()),
        "survived": sum(a["survived"] for a in areas.values()),
        "skipped": sum(a["skipped"] for a in areas.values()),
        "failed_tests": sorted({n for n, s in cases if s == "failed" and n in names}),
        "other_failed_tests": sorted({n for n, s in cases if s == "failed" and n not in names}),
        "seconds": seconds,
        "pytest_exit": code,
        "pytest_tail": " || ".join(tails),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=200, help="generated cases per campaign target")
    parser.add_argument("--faults", choices=("none", "fast", "all"), default="fast", help="which fault tests to run")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    args = parser.parse_args()

    campaigns = run_campaigns(args.examples)
    faults = run_faults(args.faults) if args.faults != "none" else None
    bad = any(r["tracebacks"] or r["partial_files"] or r["errors_without_offline_hint"] for r in campaigns.values())
    bad = bad or bool(faults and faults["failed_tests"])
    if args.json:
        print(json.dumps({"campaigns": campaigns, "faults": faults}, indent=2))
        return 1 if bad else 0

    print(f"bad-input campaigns ({args.examples} generated cases requested per target)")
    head = f"{'target':<16}{'cases':>7}{'accepted':>10}{'clean err':>11}{'tracebacks':>12}{'partial':>9}{'seconds':>9}"
    print(head)
    for name, r in campaigns.items():
        print(
            f"{name:<16}{r['cases']:>7}{r['accepted']:>10}{r['clean_errors']:>11}{r['tracebacks']:>12}"
            f"{r['partial_files']:>9}{r['seconds']:>9.2f}"
        )
    total = {
        k: sum(r[k] for r in campaigns.values())
        for k in ("cases", "accepted", "clean_errors", "tracebacks", "partial_files")
    }
    print(
        f"{'total':<16}{total['cases']:>7}{total['accepted']:>10}{total['clean_errors']:>11}"
        f"{total['tracebacks']:>12}{total['partial_files']:>9}"
    )
    print(f"discovery failures without the offline hint: {campaigns['discovery']['errors_without_offline_hint']}")
    for name, r in campaigns.items():
        for where, count in r["defects"].items():
            print(f"  {name}: {count} case(s) ended at {where}")
    if faults is not None:
        print()
        print(f"fault-injection tests (scope {faults['scope']}, {faults['seconds']} s)")
        print(f"{'area':<44}{'injected':>9}{'survived':>9}{'skipped':>9}")
        for area, a in faults["areas"].items():
            print(f"{area:<44}{a['injected']:>9}{a['survived']:>9}{a['skipped']:>9}")
        print(f"{'total':<44}{faults['injected']:>9}{faults['survived']:>9}{faults['skipped']:>9}")
        if faults["failed_tests"]:
            print(f"  failed: {', '.join(faults['failed_tests'])}")
        if faults["other_failed_tests"]:
            print(f"  (other tests of those modules failed: {', '.join(faults['other_failed_tests'])})")
        print(f"  pytest: {faults['pytest_tail']}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
