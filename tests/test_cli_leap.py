"""The Leap commands (zone, policy, plan) as real subprocesses against real `nxstore serve`
daemons on 127.0.0.1: every command's happy path and an error line each, pairing forwarded
into a daemon and offline, the SPEC syntax, and the Failover confirmation prompt."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import nxstore
from nxstore.cli.specs import (
    network_arg,
    network_text,
    schedule_arg,
    schedule_text,
    stage_arg,
    stage_text,
)
from nxstore.leap import NetworkMapping, PolicySchedule, Stage

sys.path.insert(0, str(Path(__file__).parent / "replication"))
from sites_helper import NXSTORE, Daemon  # noqa: E402

SECRET = "leap command line test secret"


def nx(*args: object, rc: int = 0, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run `nxstore ARGS` (stdin: the text it reads, else none); assert the exit status and
    that no traceback leaked."""
    proc = subprocess.run([*NXSTORE, *map(str, args)], capture_output=True, text=True,
                          timeout=180, input=stdin,
                          stdin=subprocess.DEVNULL if stdin is None else None)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == rc, (f"nxstore {' '.join(map(str, args))}: rc {proc.returncode}"
                                   f" != {rc}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


def error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The last stderr line, `nxstore: error: ...`, holding every needle."""
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("nxstore: error: "), proc.stderr
    for needle in needles:
        assert needle in line, line
    return line


@pytest.fixture
def env(tmp_path) -> Path:
    """Clusters `canada` and `france` (not served yet) and the secret file."""
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    for name in ("canada", "france"):
        nxstore.Cluster.create(str(tmp_path / name), block_size=4096, background=False).close()
    return tmp_path


@contextlib.contextmanager
def served(env: Path, *names: str) -> Iterator[dict[str, Daemon]]:
    daemons: dict[str, Daemon] = {}
    try:
        for name in names:
            daemons[name] = Daemon.start(str(env / name), str(env / "secret"),
                                         "--schedule-interval", "0")
        yield daemons
    finally:
        for d in daemons.values():
            d.cleanup()


def pair(env: Path, daemons: dict[str, Daemon]) -> None:
    out = nx("zone", "add", env / "canada", "france", daemons["france"].address,
             "--secret-file", env / "secret").stdout
    assert f"paired with zone france at {daemons['france'].address} (cluster france" in out
    assert "it lists canada as a zone too" in out


# -- SPEC syntax (no daemon) ---------------------------------------------------------------

@pytest.mark.parametrize("spec, expected", [
    ("every=15m,keep-local=4,keep-remote=2,app-consistent",
     PolicySchedule(900.0, 4, 2, True)),
    ("every=1h", PolicySchedule(3600.0)),
    ("rpo=0,witness=127.0.0.1:7500", PolicySchedule(0.0, witness="127.0.0.1:7500")),
    (" every = 2d , keep-remote=7", PolicySchedule(172800.0, keep_remote=7)),
])
def test_schedule_spec(spec, expected):
    assert schedule_arg(spec) == expected
    assert schedule_arg(schedule_text(expected)) == expected


@pytest.mark.parametrize("spec, expected", [
    ("vms=db,app", Stage(vms=("db", "app"))),
    ("categories=tier:web,tier:app;delay=30", Stage(categories=(("tier", "web"), ("tier", "app")),
                                                   delay=30.0)),
    ("vms=db;categories=tier:db;delay=2m;hook=/usr/local/bin/check",
     Stage(("db",), (("tier", "db"),), 120.0, "/usr/local/bin/check")),
])
def test_stage_spec(spec, expected):
    assert stage_arg(spec) == expected
    assert stage_arg(stage_text(expected)) == expected


@pytest.mark.parametrize("spec, expected", [
    ("VLAN50=FR-VLAN50", NetworkMapping("VLAN50", "FR-VLAN50")),
    ("VLAN50=FR-VLAN50,test=VLAN51=FR-VLAN51",
     NetworkMapping("VLAN50", "FR-VLAN50", "VLAN51", "FR-VLAN51")),
])
def test_network_spec(spec, expected):
    assert network_arg(spec) == expected
    assert network_arg(network_text(expected)) == expected


@pytest.mark.parametrize("args, needle", [
    (["policy", "create", "P", "p", "--primary", "a", "--recovery", "b",
      "--schedule", "every=7x"], "bad schedule 'every=7x'"),
    (["policy", "create", "P", "p", "--primary", "a", "--recovery", "b",
      "--schedule", "every=1h,keep=3"], "unknown field 'keep'"),
    (["policy", "create", "P", "p", "--primary", "a", "--recovery", "b",
      "--schedule", "keep-local=3"], "give every=DURATION"),
    (["policy", "create", "P", "p", "--primary", "a", "--recovery", "b",
      "--schedule", "every=1h,keep-local=0"], "at least 1"),
    (["plan", "create", "P", "p", "--primary", "a", "--recovery", "b",
      "--stage", "delay=3"], "name some vms="),
    (["plan", "create", "P", "p", "--primary", "a", "--recovery", "b",
      "--stage", "vms=db;hook=check.sh"], "not an absolute path"),
    (["plan", "create", "P", "p", "--primary", "a", "--recovery", "b",
      "--stage", "vms=db;categories=tier"], "'tier' is not KEY:VALUE"),
    (["plan", "create", "P", "p", "--primary", "a", "--recovery", "b", "--stage", "vms=db",
      "--network", "VLAN50"], "expected PRIMARY=RECOVERY"),
    (["plan", "create", "P", "p", "--primary", "a", "--recovery", "b", "--stage", "vms=db",
      "--network", "A=B,VLAN51=C"], "test=PRIMARY_TEST=RECOVERY_TEST"),
    (["plan", "failover", "P", "p", "--test", "--planned"], "not allowed with"),
    (["plan", "failover", "P", "p", "--unplanned", "--point", "yesterday"], "bad point"),
])
def test_bad_specs_are_usage_errors(args, needle):
    error_line(nx(*args, rc=2), needle)


# -- zones -----------------------------------------------------------------------------------

def test_zone_add_list_remove_in_the_daemons(env):
    canada, france = env / "canada", env / "france"
    with served(env, "canada", "france") as d:
        pair(env, d)
        listed = json.loads(nx("zone", "list", canada, "--json").stdout)
        assert [(z["name"], [(m["name"], m["address"]) for m in z["clusters"]])
                for z in listed] == [("france", [("france", d["france"].address)])]
        back = json.loads(nx("zone", "list", france, "--json", "--check").stdout)
        assert [(z["name"], z["clusters"][0]["address"], z["up"]) for z in back] == \
            [("canada", d["canada"].address, True)]
        out = nx("zone", "list", france, "--check").stdout
        assert out.splitlines()[0].split() == ["ZONE", "CLUSTER", "ADDRESS", "ID", "PAIRED",
                                               "UP"]
        assert d["canada"].address in out and out.split()[-1] == "yes"
        nx("zone", "add", canada, "france", d["france"].address, "--secret-file",
           env / "secret")  # idempotent
        error_line(nx("zone", "add", canada, "spain", d["france"].address, "--secret-file",
                      env / "secret", rc=1), "called 'france'", "not 'spain'")
        assert "unpaired zone canada" in nx("zone", "remove", france, "canada").stdout
        assert nx("zone", "list", canada).stdout.strip() == "no availability zones"
        assert nx("zone", "list", france, "--json").stdout.strip() == "[]"
        error_line(nx("zone", "remove", france, "canada", rc=1), "no availability zone 'canada'")


def test_zone_add_offline_needs_local_address_and_check_says_down(env):
    canada, france = env / "canada", env / "france"
    wrong = env / "wrong-secret"
    wrong.write_text("not the secret france has\n")
    wrong.chmod(0o600)
    with served(env, "france") as d:
        error_line(nx("zone", "add", canada, "france", d["france"].address, "--secret-file",
                      env / "secret", rc=1), "is not served now", "--local-address HOST:PORT")
        error_line(nx("zone", "add", canada, "france", d["france"].address, "--secret-file",
                      wrong, "--local-address", "127.0.0.1:9", rc=1), "france")
        assert nx("zone", "list", canada).stdout.strip() == "no availability zones"
        assert nx("site", "list", canada, "--json").stdout.strip() == "[]"  # nothing recorded
        nx("zone", "add", canada, "france", d["france"].address, "--secret-file",
           env / "secret", "--local-address", "127.0.0.1:9")
        assert [z["clusters"][0]["address"] for z in
                json.loads(nx("zone", "list", france, "--json").stdout)] == ["127.0.0.1:9"]
        (zone,) = json.loads(nx("zone", "list", canada, "--json", "--check").stdout)
        assert zone["name"] == "france" and zone["up"] is True
        (zone,) = json.loads(nx("zone", "list", france, "--json", "--check").stdout)
        assert zone["name"] == "canada" and zone["up"] is False
        assert zone["clusters"][0]["error"]
        assert "no: " in nx("zone", "list", france, "--check").stdout


def test_a_zone_of_two_clusters_and_policy_locations(env):
    canada, paris_a = env / "canada", env / "paris-a"
    for name in ("paris-a", "paris-b"):
        nxstore.Cluster.create(str(env / name), block_size=4096, background=False).close()
    with nxstore.Cluster.open(str(canada), background=False) as c:
        c.create_category("dr", values=["yes"])
    with served(env, "canada", "paris-a", "paris-b") as d:
        for member in ("paris-a", "paris-b"):
            out = nx("zone", "add", canada, "paris", d[member].address, "--cluster", member,
                     "--secret-file", env / "secret").stdout
            assert f"paired with zone paris at {d[member].address} (cluster {member}" in out
        nx("zone", "add", paris_a, "paris", d["paris-b"].address, "--cluster", "paris-b",
           "--secret-file", env / "secret")  # paris-a's fellow in its own zone
        (paris,) = json.loads(nx("zone", "list", canada, "--json").stdout)
        assert [(m["name"], m["address"]) for m in paris["clusters"]] == \
            [("paris-a", d["paris-a"].address), ("paris-b", d["paris-b"].address)]
        own, other = json.loads(nx("zone", "list", paris_a, "--json").stdout)
        assert (own["name"], own["local"], [m["name"] for m in own["clusters"]]) == \
            ("paris", True, ["paris-a", "paris-b"])
        assert own["clusters"][0]["this_site"] and other["name"] == "canada"
        out = nx("zone", "list", canada).stdout
        assert out.count("paris ") == 2 and "paris-a" in out and "paris-b" in out

        create = ["policy", "create", canada, "p", "--primary", "canada", "--schedule",
                  "every=1h", "--category", "dr:yes", "--recovery"]
        error_line(nx(*create, "paris", rc=1), "zone 'paris' has clusters paris-a, paris-b",
                   "paris/CLUSTER")
        error_line(nx(*create, "paris/paris-c", rc=1), "cluster 'paris-c' is not a member",
                   "members: paris-a, paris-b")
        assert "created policy p: canada -> paris/paris-b" in nx(*create, "paris/paris-b").stdout
        info = json.loads(nx("policy", "show", paris_a, "p", "--json").stdout)  # delivered
        assert (info["recovery"], info["recovery_clusters"]) == (["paris"], ["paris-b"])
        assert "policy p: canada -> paris/paris-b" in nx("policy", "show", canada, "p").stdout

        error_line(nx("zone", "remove", canada, "paris", "--cluster", "paris-b", rc=1),
                   "cluster 'paris-b' of zone 'paris' is used by policy 'p'")
        error_line(nx("zone", "remove", canada, "paris", rc=1), "zone 'paris' is used by")
        out = nx("zone", "remove", canada, "paris", "--cluster", "paris-a").stdout
        assert "unpaired cluster paris-a of zone paris" in out
        (paris,) = json.loads(nx("zone", "list", canada, "--json").stdout)
        assert [m["name"] for m in paris["clusters"]] == ["paris-b"]
        nx("policy", "update", canada, "p", "--recovery", "paris")  # one cluster now
        assert "canada -> paris/paris-b" in nx("policy", "show", canada, "p").stdout


# -- recovery plans --------------------------------------------------------------------------

def _vm_setup(env: Path) -> None:
    """VMs db and app at canada (on VLAN50), in PD pd-app, replicated to france."""
    canada = env / "canada"
    for vm, tier in (("db", "db"), ("app", "web")):
        nx("vdisk", "create", canada, f"{vm}-os", "64K")
        nx("vm", "create", canada, vm, "--vdisk", f"{vm}-os", "--nic", "VLAN50",
           "--category", f"tier={tier}")
    nx("pd", "create", canada, "pd-app", "db", "app")
    nx("pd", "snapshot", canada, "pd-app", "--replicate-to", "france")


def _vms(path: Path) -> dict[str, tuple[str, list[str]]]:
    return {v["name"]: (v["power"], [n["network"] for n in v["nics"]])
            for v in json.loads(nx("vm", "list", path, "--json").stdout)}


def _steps(out: str) -> list[str]:
    """The STATUS column of a report table, by step name."""
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["STEP", "STATUS", "SECONDS"], out
    return [line for line in lines[1:] if not line.startswith(("problem: ", "test failover",
                                                               "planned failover"))]


def test_plan_commands_round_trip(env):
    canada, france = env / "canada", env / "france"
    with served(env, "canada", "france") as d:
        pair(env, d)
        _vm_setup(env)
        out = nx("plan", "create", france, "ca-plan", "--primary", "canada", "--recovery",
                 "france", "--stage", "vms=db", "--stage", "categories=tier:web;delay=0s",
                 "--network", "VLAN50=FR-VLAN50,test=VLAN51=FR-VLAN51",
                 "--stay-off", "nobody").stdout
        assert "created recovery plan ca-plan: canada -> france, 2 stages" in out
        error_line(nx("plan", "create", france, "ca-plan", "--primary", "canada",
                      "--recovery", "france", "--stage", "vms=db", rc=1), "ca-plan")
        error_line(nx("plan", "create", france, "p2", "--primary", "canada", "--recovery",
                      "spain", "--stage", "vms=db", rc=1), "no availability zone 'spain'")
        (listed,) = json.loads(nx("plan", "list", canada, "--json").stdout)  # delivered
        assert listed["name"] == "ca-plan" and listed["recovery"] == "france"
        assert [s["spec"] for s in listed["stages"]] == ["vms=db", "categories=tier:web"]
        show = nx("plan", "show", france, "ca-plan").stdout
        for text in ("recovery plan ca-plan: canada -> france", "stage 1: vms=db",
                     "stage 2: categories=tier:web", "network: VLAN50=FR-VLAN50,test=VLAN51=FR-VLAN51",
                     "stay off: nobody", "last failover status: -"):
            assert text in show, show
        error_line(nx("plan", "show", france, "nope", rc=1), "nope")

        out = nx("plan", "validate", france, "ca-plan").stdout
        assert out.strip().endswith("validate of plan ca-plan: Succeeded"), out
        report = json.loads(nx("plan", "validate", france, "ca-plan", "--json").stdout)
        assert report["status"] == "Succeeded" and report["steps"][0]["name"] == "validate"
        error_line(nx("plan", "validate", canada, "ca-plan", rc=1),
                   "runs at its recovery zone 'france'")

        # test failover: the prompt; a wrong word (or none) does nothing
        for answer in ("failover\n", "yes\n", None):
            p = nx("plan", "failover", france, "ca-plan", "--test", rc=1, stdin=answer)
            error_line(p, "test failover of plan ca-plan not confirmed: nothing done")
        assert _vms(france) == {}
        p = nx("plan", "failover", france, "ca-plan", "--test", stdin="Failover\n")
        assert "Type Failover to go on" in p.stderr
        steps = _steps(p.stdout)
        assert any(s.split()[:2] == ["clone", "pd-app"] for s in steps), p.stdout
        assert p.stdout.strip().endswith("test failover of plan ca-plan: Succeeded")
        assert _vms(france) == {"ca-plan-test-db": ("on", ["FR-VLAN51"]),
                                "ca-plan-test-app": ("on", ["FR-VLAN51"])}
        error_line(nx("plan", "failover", france, "ca-plan", "--test", "--yes", rc=1),
                   "still up: run 'nxstore plan cleanup' first")
        out = nx("plan", "cleanup", france, "ca-plan").stdout
        assert "remove vm ca-plan-test-db" in out and out.strip().endswith(": Succeeded")
        assert _vms(france) == {}

        # planned failover (--yes skips the prompt), then reverse
        error_line(nx("plan", "failover", france, "ca-plan", "--planned", "--point", "5",
                      "--yes", rc=1), "--point goes with --unplanned or --test")
        p = nx("plan", "failover", france, "ca-plan", "--planned", "--yes", "--json")
        assert "Type Failover" not in p.stderr
        report = json.loads(p.stdout)
        assert report["status"] == "Succeeded", report
        names = [s["name"] for s in report["steps"]]
        assert names.index("stage 1: db") < names.index("stage 2: app")
        assert "migrate pd-app from canada" in names
        assert _vms(france) == {"db": ("on", ["FR-VLAN50"]), "app": ("on", ["FR-VLAN50"])}
        assert _vms(canada) == {}
        assert json.loads(nx("plan", "show", france, "ca-plan", "--json").stdout)[
            "last_failover_status"] == "Succeeded"
        out = nx("plan", "reverse", france, "ca-plan").stdout
        assert "reverse plan ca-plan" in out and out.strip().endswith(": Succeeded")
        spec = json.loads(nx("plan", "show", canada, "ca-plan", "--json").stdout)
        assert (spec["primary"], spec["recovery"]) == ("france", "canada")
        assert spec["networks"][0]["spec"] == "FR-VLAN50=VLAN50,test=FR-VLAN51=VLAN51"
        error_line(nx("plan", "failover", france, "ca-plan", "--unplanned", "--yes", rc=1),
                   "runs at its recovery zone 'canada'")

        # unplanned failover back to canada, france gone (no policy protects pd-app here:
        # replicate it back once by hand)
        nx("pd", "snapshot", france, "pd-app", "--replicate-to", "canada")
        d["france"].kill()
        p = nx("plan", "failover", canada, "ca-plan", "--unplanned", "--yes")
        assert p.stdout.strip().endswith("unplanned failover of plan ca-plan: Succeeded")
        assert "activate pd-app" in p.stdout
        assert _vms(canada) == {"db": ("on", ["VLAN50"]), "app": ("on", ["VLAN50"])}

        assert "deleted recovery plan ca-plan" in nx("plan", "delete", canada, "ca-plan").stdout
        assert nx("plan", "list", canada).stdout.strip() == "no recovery plans"
        error_line(nx("plan", "delete", canada, "ca-plan", rc=1), "ca-plan")


def test_plan_failover_that_fails_exits_nonzero_with_its_report(env):
    france = env / "france"
    with served(env, "canada", "france") as d:
        pair(env, d)
        nx("plan", "create", france, "ca-plan", "--primary", "canada", "--recovery", "france",
           "--stage", "vms=ghost")
        p = nx("plan", "failover", france, "ca-plan", "--test", "--yes", rc=1)
        assert "problem: VM 'ghost' is not protected to zone 'france'" in p.stdout
        assert p.stdout.strip().endswith("test failover of plan ca-plan: Failed: validate")
        error_line(p, "test failover of plan ca-plan: Failed: validate")
        p = nx("plan", "validate", france, "ca-plan", "--json", rc=1)
        assert json.loads(p.stdout)["problems"][0].startswith("VM 'ghost'")
        assert nx("plan", "list", france).stdout.split()[-2:] == ["Failed:", "validate"]


# -- policies ----------------------------------------------------------------------------------

def test_policy_schedule_errors_before_any_change(env):
    canada = env / "canada"
    with served(env, "canada", "france") as d:
        pair(env, d)
        error_line(nx("policy", "create", canada, "p", "--primary", "canada", "--recovery",
                      "france", "--schedule", "rpo=0,witness=127.0.0.1:9", "--category",
                      "tier:db", rc=1), "needs --witness-secret-file")
        error_line(nx("policy", "create", canada, "p", "--primary", "canada", "--recovery",
                      "france", "--schedule", "every=1h", "--witness-secret-file",
                      env / "secret", "--category", "tier:db", rc=1),
                   "--witness-secret-file goes with an rpo=0 --schedule")
        error_line(nx("policy", "update", canada, "p", rc=1), "nothing to change")
        error_line(nx("policy", "show", canada, "p", rc=1), "'p'")
        assert nx("policy", "list", canada).stdout.strip() == "no protection policies"


def test_policy_commands(env):
    canada, france = env / "canada", env / "france"
    with nxstore.Cluster.open(str(canada), background=False) as c:
        c.create_category("replicated-vm", values=["from-canada"])
        c.create_category("tier", values=["db"])
        c.create_vdisk("db-os", 64 << 10)
        c.create_vm("db", vdisks=["db-os"], categories={"tier": "db"})
        c.create_protection_domain("pd-db", entities=["db"])
    with served(env, "canada", "france") as d:
        pair(env, d)
        out = nx("policy", "create", canada, "ca-to-fr", "--primary", "canada", "--recovery",
                 "france", "--schedule", "every=1h,keep-local=3,keep-remote=2,app-consistent",
                 "--schedule", "every=15m,keep-local=4", "--category",
                 "replicated-vm:from-canada").stdout
        assert "created policy ca-to-fr: canada -> france" in out
        error_line(nx("policy", "create", canada, "ca-to-fr", "--primary", "canada",
                      "--recovery", "france", "--schedule", "every=1h", "--category",
                      "replicated-vm:from-canada", rc=1), "ca-to-fr")
        error_line(nx("policy", "create", canada, "p2", "--primary", "canada", "--recovery",
                      "canada", "--schedule", "every=1h", "--category",
                      "replicated-vm:from-canada", rc=1), "both primary and recovery")
        show = nx("policy", "show", canada, "ca-to-fr").stdout
        for text in ("policy ca-to-fr: canada -> france (version 1)",
                     "schedule (async): every=1h,keep-local=3,keep-remote=2,app-consistent",
                     "schedule (nearsync): every=15m,keep-local=4,keep-remote=1",
                     "categories: replicated-vm:from-canada", "containers: -"):
            assert text in show, show
        (listed,) = json.loads(nx("policy", "list", france, "--json").stdout)  # delivered
        assert listed["name"] == "ca-to-fr" and listed["recovery"] == ["france"]
        assert "ca-to-fr" in nx("policy", "list", canada).stdout
        out = nx("policy", "update", canada, "ca-to-fr", "--schedule", "every=2h").stdout
        assert "updated policy ca-to-fr (version 2): schedules" in out
        (s,) = json.loads(nx("policy", "show", canada, "ca-to-fr", "--json").stdout)["schedules"]
        assert s["spec"] == "every=2h,keep-local=1,keep-remote=1"
        assert SECRET not in nx("policy", "show", canada, "ca-to-fr", "--json").stdout

        out = nx("policy", "migrate-pd", canada, "pd-db", "ca-to-fr").stdout
        assert "pd-db is now protected by policy ca-to-fr" in out
        error_line(nx("policy", "migrate-pd", canada, "pd-nope", "ca-to-fr", rc=1), "pd-nope")
        error_line(nx("zone", "remove", canada, "france", rc=1), "policy 'ca-to-fr'")

        assert "deleted policy ca-to-fr" in nx("policy", "delete", canada, "ca-to-fr").stdout
        assert nx("policy", "list", canada).stdout.strip() == "no protection policies"
        error_line(nx("policy", "delete", canada, "ca-to-fr", rc=1), "ca-to-fr")
