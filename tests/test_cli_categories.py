"""`nxstore category ...` and the VM commands that change a VM after creation (`vm category
add|remove`, `vm nics`, `vm hooks set|clear`): output, JSON, one error line and exit 1 for
each, usage errors (exit 2), and the same commands forwarded to a running `nxstore serve`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import nxstore
from nxstore.cli import main

sys.path.insert(0, str(Path(__file__).parent / "replication"))
from sites_helper import NXSTORE, Daemon  # noqa: E402

SECRET = "a shared secret of 32 characters"


def run(capsys, *argv: object, rc: int = 0) -> str:
    """`nxstore ARGV` in this process; its stdout. A failure (rc 1) must print exactly one
    `nxstore: error:` line, which is returned instead."""
    capsys.readouterr()
    got = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert got == rc, (argv, got, out, err)
    if rc == 0:
        return out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nxstore: error: "), err
    return lines[0]


@pytest.fixture
def cl(tmp_path) -> str:
    """A cluster with vDisk d1 and VM web on it (NIC VLAN50)."""
    path = str(tmp_path / "c")
    with nxstore.Cluster.create(path, block_size=4096, background=False) as c:
        c.create_vdisk("d1", 1 << 20)
        c.create_vm("web", vdisks=["d1"], nics=[{"network": "VLAN50"}])
    return path


def executable(directory: Path, name: str) -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_category_create_list_add_values_delete(capsys, cl):
    assert run(capsys, "category", "list", cl) == "no categories\n"
    out = run(capsys, "category", "create", cl, "replicated-vm", "from-canada",
              "--description", "Leap demo")
    assert out == "created category replicated-vm: from-canada\n"
    run(capsys, "category", "create", cl, "env", "prod", "test")
    assert run(capsys, "category", "add-values", cl, "env", "dev") == "category env: prod, test, dev\n"
    listing = run(capsys, "category", "list", cl).splitlines()
    assert listing[0].split() == ["KEY", "VALUES", "DESCRIPTION"]
    assert listing[1].split() == ["env", "prod,test,dev"]
    assert listing[2].split() == ["replicated-vm", "from-canada", "Leap", "demo"]
    assert json.loads(run(capsys, "category", "list", cl, "--json")) == [
        {"key": "env", "values": ["prod", "test", "dev"], "description": ""},
        {"key": "replicated-vm", "values": ["from-canada"], "description": "Leap demo"}]
    assert run(capsys, "category", "delete", cl, "env") == "deleted category env\n"
    assert [c["key"] for c in json.loads(run(capsys, "category", "list", cl, "--json"))] == [
        "replicated-vm"]


def test_category_errors(capsys, cl):
    run(capsys, "category", "create", cl, "env", "prod")
    assert "category 'env' exists" in run(capsys, "category", "create", cl, "env", "x", rc=1)
    assert "bad category name 'a/b'" in run(capsys, "category", "create", cl, "a/b", "x", rc=1)
    assert "bad category value name 'x@y'" in run(capsys, "category", "create", cl, "k", "x@y",
                                                  rc=1)
    assert "no category 'nope'" in run(capsys, "category", "add-values", cl, "nope", "x", rc=1)
    assert "no category 'nope'" in run(capsys, "category", "delete", cl, "nope", rc=1)
    run(capsys, "vm", "category", "add", cl, "web", "env", "prod")
    err = run(capsys, "category", "delete", cl, "env", rc=1)
    assert "category 'env' is in use by VM 'web'" in err
    assert run(capsys, "category", "list", cl, "--json") != "[]\n"
    assert main(["category", "create", cl, "env"]) == 2  # no VALUE: usage error
    assert main(["category", "list"]) == 2


def test_vm_category_add_remove(capsys, cl):
    run(capsys, "category", "create", cl, "env", "prod", "test")
    assert run(capsys, "vm", "category", "add", cl, "web", "env", "prod") == (
        "VM web: category env=prod\n")
    run(capsys, "vm", "category", "add", cl, "web", "env", "test")  # replaces prod
    assert json.loads(run(capsys, "vm", "show", cl, "web", "--json"))["categories"] == {
        "env": "test"}
    assert "category 'env' has no value 'dev'" in run(capsys, "vm", "category", "add", cl,
                                                      "web", "env", "dev", rc=1)
    assert "no category 'tier'" in run(capsys, "vm", "category", "add", cl, "web", "tier", "x",
                                       rc=1)
    assert "no VM 'nope'" in run(capsys, "vm", "category", "add", cl, "nope", "env", "prod", rc=1)
    assert run(capsys, "vm", "category", "remove", cl, "web", "env") == (
        "VM web: category env removed\n")
    assert "VM 'web' has no category 'env'" in run(capsys, "vm", "category", "remove", cl, "web",
                                                   "env", rc=1)
    assert json.loads(run(capsys, "vm", "show", cl, "web", "--json"))["categories"] == {}
    assert main(["vm", "category", "add", cl, "web", "env"]) == 2  # no VALUE


def test_vm_nics(capsys, cl):
    out = run(capsys, "vm", "nics", cl, "web", "--nic", "VLAN51",
              "--nic", "VLAN52,mac=52:54:00:aa:bb:cc,model=virtio")
    assert out == "VM web: NICs on VLAN51, VLAN52\n"
    assert json.loads(run(capsys, "vm", "show", cl, "web", "--json"))["nics"] == [
        {"network": "VLAN51"}, {"network": "VLAN52", "mac": "52:54:00:aa:bb:cc", "model": "virtio"}]
    assert "bad NIC setting 'mac'" in run(capsys, "vm", "nics", cl, "web", "--nic", "VLAN9,mac",
                                          rc=1)
    assert "bad NIC ',mac=x'" in run(capsys, "vm", "nics", cl, "web", "--nic", ",mac=x", rc=1)
    assert "no VM 'nope'" in run(capsys, "vm", "nics", cl, "nope", "--nic", "VLAN1", rc=1)
    assert len(json.loads(run(capsys, "vm", "show", cl, "web", "--json"))["nics"]) == 2
    assert run(capsys, "vm", "nics", cl, "web", "--none") == "VM web: NICs on none\n"
    assert main(["vm", "nics", cl, "web"]) == 2  # neither --nic nor --none
    assert main(["vm", "nics", cl, "web", "--none", "--nic", "VLAN1"]) == 2
    # vm create takes the same NIC syntax
    run(capsys, "vdisk", "create", cl, "d2", "1M")
    run(capsys, "vm", "create", cl, "app", "--vdisk", "d2", "--nic", "VLAN7,mac=m1")
    assert json.loads(run(capsys, "vm", "show", cl, "app", "--json"))["nics"] == [
        {"network": "VLAN7", "mac": "m1"}]


def test_vm_hooks_set_clear(capsys, cl, tmp_path, monkeypatch):
    freeze, thaw = executable(tmp_path, "freeze.sh"), executable(tmp_path, "thaw.sh")
    monkeypatch.chdir(tmp_path)  # a relative EXE is stored as an absolute path
    out = run(capsys, "vm", "hooks", "set", cl, "web", "--pre-freeze", "freeze.sh")
    assert out == f"VM web: pre-freeze {freeze} (timeout 30 s)\n"
    run(capsys, "vm", "hooks", "set", cl, "web", "--post-thaw", str(thaw), "--timeout", "5")
    info = json.loads(run(capsys, "vm", "show", cl, "web", "--json"))
    assert info["hooks"] == {"pre-freeze": str(freeze), "post-thaw": str(thaw)}  # both kept
    assert info["hook_timeout"] == 5.0
    run(capsys, "vm", "hooks", "set", cl, "web", "--timeout", "7")
    assert json.loads(run(capsys, "vm", "show", cl, "web", "--json"))["hooks"] == info["hooks"]
    assert "is not an executable file" in run(capsys, "vm", "hooks", "set", cl, "web",
                                              "--post-thaw", "missing.sh", rc=1)
    assert "needs --pre-freeze, --post-thaw or --timeout" in run(
        capsys, "vm", "hooks", "set", cl, "web", rc=1)
    assert "timeout" in run(capsys, "vm", "hooks", "set", cl, "web", "--timeout", "0", rc=1)
    assert "no VM 'nope'" in run(capsys, "vm", "hooks", "clear", cl, "nope", rc=1)
    assert main(["vm", "hooks", "set", cl, "web", "--timeout", "soon"]) == 2
    with nxstore.Cluster.open(cl, background=False) as c:  # refused calls changed nothing
        assert c.vm("web").hooks() == ({"pre-freeze": str(freeze), "post-thaw": str(thaw)}, 7.0)
    assert run(capsys, "vm", "hooks", "clear", cl, "web") == "VM web: no hooks (timeout 30 s)\n"
    assert json.loads(run(capsys, "vm", "show", cl, "web", "--json"))["hooks"] == {}


def nx(*args: object, rc: int = 0, cwd: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([*NXSTORE, *map(str, args)], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, cwd=cwd)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == rc, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc


def test_forwarded_to_a_running_daemon(cl, tmp_path):
    (tmp_path / "secret").write_text(SECRET + "\n")
    (tmp_path / "secret").chmod(0o600)
    executable(tmp_path, "freeze.sh")
    d = Daemon.start(cl, str(tmp_path / "secret"))
    try:
        nx("category", "create", "c", "env", "prod", cwd=tmp_path)
        nx("vm", "category", "add", "c", "web", "env", "prod", cwd=tmp_path)
        nx("vm", "nics", "c", "web", "--nic", "VLAN60,mac=m", cwd=tmp_path)
        nx("vm", "hooks", "set", "c", "web", "--pre-freeze", "freeze.sh", cwd=tmp_path)
        info = json.loads(nx("vm", "show", cl, "web", "--json").stdout)
        assert info["categories"] == {"env": "prod"}
        assert info["nics"] == [{"network": "VLAN60", "mac": "m"}]
        # the EXE resolved in the client's directory, not the daemon's
        assert info["hooks"] == {"pre-freeze": os.path.join(tmp_path, "freeze.sh")}
        err = nx("category", "delete", cl, "env", rc=1).stderr.strip().splitlines()
        assert len(err) == 1 and "in use by VM 'web'" in err[0]
        nx("vm", "category", "remove", cl, "web", "env")
        nx("vm", "hooks", "clear", cl, "web")
        nx("category", "delete", cl, "env")
        assert json.loads(nx("category", "list", cl, "--json").stdout) == []
    finally:
        d.cleanup()
