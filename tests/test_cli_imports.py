"""The command line and `import nxstore` import only what they use (issue 17, "Fast CLI").

Each check runs in a fresh interpreter and looks at sys.modules: `import nxstore` imports no
layer, the engine none above it, `nxstore --help` not even the engine, `snapshot create`,
`clone` and `info` the engine but no layer above it, and a command forwarded to a running
`nxstore serve` no engine at all. Not a timing test: what it guards is what the time goes
to (benchmarks/bench_cli_startup.py measures it). Also: the parser built for one command
gives the same help as the parser of every command (nxstore.cli builds only the one it runs).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "replication"))
from sites_helper import Daemon  # noqa: E402

import nxstore  # noqa: E402
from nxstore.cli import build_parser  # noqa: E402

SECRET = "a shared secret of 32 characters"
# What the engine-only commands must not load: every layer above the store.
ABOVE_STORE = ("nxstore.cluster", "nxstore.fsck", "nxstore.replication", "nxstore.protection",
               "nxstore.nearsync", "nxstore.metro", "nxstore.leap", "nxstore.nbd")
ENGINE = ("nxstore.store", "numpy")
_MARK = "MODULES:"


def loaded(code: str, *argv: str) -> tuple[list[str], subprocess.CompletedProcess]:
    """Run `code` in a fresh interpreter (sys.argv[1:] = argv); the modules it left loaded
    (nxstore's and numpy) and the process (its stdout without the module line)."""
    report = (f"\nimport sys as _s\nprint({_MARK!r} + __import__('json').dumps(sorted("
              "m for m in _s.modules if m.split('.')[0] in ('nxstore', 'numpy'))))")
    proc = subprocess.run([sys.executable, "-c", code + report, *argv], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    out, _, modules = proc.stdout.rpartition(_MARK)
    proc.stdout = out
    return json.loads(modules), proc


def under(modules: list[str], packages: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == p or m.startswith(p + ".") for p in packages)]


CLI = "import sys\nfrom nxstore.cli import main\nassert main(sys.argv[1:]) == 0\n"


def test_import_nxstore_loads_no_layer_until_a_name_is_used():
    modules, _ = loaded("import nxstore")
    assert modules == ["nxstore"]
    modules, proc = loaded("import nxstore\nprint(nxstore.Snapshot.__module__)")
    assert proc.stdout.strip() == "nxstore.store.snapshot"
    assert not under(modules, ABOVE_STORE), modules
    # The public names are those of __all__, each the object of its module.
    from nxstore.cluster import Cluster
    from nxstore.protection import VM
    from nxstore.store.catalog import ContainerRow

    assert (nxstore.Cluster, nxstore.VM, nxstore.Container) == (Cluster, VM, ContainerRow)
    assert set(nxstore.__all__) <= set(dir(nxstore))
    star: dict[str, object] = {}
    exec("from nxstore import *", star)
    assert set(nxstore.__all__) <= set(star)
    with pytest.raises(AttributeError, match="no attribute 'Clusterr'"):
        nxstore.Clusterr  # noqa: B018


def test_engine_import_loads_no_layer_above_it():
    modules, _ = loaded("import nxstore.store.engine")
    assert "nxstore.store.engine" in modules
    assert not under(modules, ABOVE_STORE), modules


def test_help_loads_no_engine():
    code = ("from nxstore.cli import build_parser, main\n"
            "commands = next(a for a in build_parser()._actions if a.dest == 'command').choices\n"
            "assert main(['--help']) == 0 and main(['--version']) == 0\n"
            "for name in commands:\n"
            "    assert main([name, '--help']) == 0, name\n")
    modules, proc = loaded(code)
    assert "usage: nxstore" in proc.stdout
    assert not under(modules, ENGINE + ABOVE_STORE), modules


def test_snapshot_clone_and_info_load_the_engine_only(tmp_path):
    path = str(tmp_path / "c")
    with nxstore.Cluster.create(path, background=False) as c:
        c.create_vdisk("db", 1 << 20).write(0, b"x" * 4096)
    for argv, says in ((["snapshot", "create", path, "db@s1"], "created snapshot db@s1"),
                       (["clone", path, "db@s1", "copy"], "created vDisk copy"),
                       (["info", path], "vDisks:")):
        modules, proc = loaded(CLI, *argv)
        assert says in proc.stdout
        assert "nxstore.store.engine" in modules
        assert not under(modules, ABOVE_STORE), (argv, under(modules, ABOVE_STORE))
    with nxstore.Cluster.open(path, background=False) as c:  # the full open sees them
        assert c.vdisk("copy").read(0, 4096) == b"x" * 4096
        assert [s.name for s in c.vdisk("db").snapshots()] == ["s1"]


def test_a_forwarded_command_loads_no_engine_in_the_client(tmp_path):
    (tmp_path / "secret").write_text(SECRET + "\n")
    (tmp_path / "secret").chmod(0o600)
    path = str(tmp_path / "c")
    nxstore.Cluster.create(path, background=False).close()
    daemon = Daemon.start(path, str(tmp_path / "secret"))
    try:
        for argv, says in ((["vdisk", "create", path, "db", "1M"], "created vDisk db"),
                           (["snapshot", "create", path, "db@s1"], "created snapshot db@s1"),
                           (["info", path], "vDisks:")):
            modules, proc = loaded(CLI, *argv)
            assert says in proc.stdout
            assert not under(modules, ENGINE + ABOVE_STORE), (argv, modules)
    finally:
        daemon.cleanup()


def _helps(parser, prefix: str = "") -> dict[str, str]:
    """The help text of `parser` and of every built subparser below it, by command path."""
    out = {prefix: parser.format_help()}
    for action in parser._actions:
        for name, sub in getattr(action, "_name_parser_map", {}).items():
            if isinstance(sub, argparse.ArgumentParser):
                out.update(_helps(sub, f"{prefix} {name}"))
    return out


def test_the_parser_of_one_command_helps_like_the_full_one():
    full = _helps(build_parser())
    commands = {path.split()[0] for path in full if path}
    assert {"snapshot", "clone", "info", "serve", "pd", "plan"} <= commands
    for command in commands:
        one = _helps(build_parser(command))
        assert set(one) == {""} | {p for p in full if p.split()[:1] == [command]}, command
        assert all(text == full[path] for path, text in one.items()), command


def test_boto3_is_imported_only_by_a_store_on_s3(tmp_path):
    """boto3 costs ~0.3 s to import: a local cluster, `nxstore create` and the CLI never
    load it (the S3 back end imports it when a store on S3 opens)."""
    code = ("import sys, nxstore\nnxstore.Cluster.create(sys.argv[1], background=False).close()\n"
            "nxstore.Cluster.open(sys.argv[1], background=False).close()\n"
            "from nxstore.cli import main\nmain(['create', sys.argv[1] + '2'])\n"
            "assert not {'boto3', 'botocore'} & set(sys.modules), 'boto3 was imported'\n")
    loaded(code, str(tmp_path / "c"))


@pytest.mark.parametrize("preset", [None, "4"])
def test_the_console_script_starts_numpy_with_one_blas_thread(tmp_path, preset):
    """nxstore uses no BLAS: the console script asks OpenBLAS for one thread (its start-up
    cost) unless the user chose a number, and numpy, imported by the command, sees it."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if preset:
        env["OPENBLAS_NUM_THREADS"] = preset
    code = ("import sys, nxstore.cli as cli\nsys.argv = ['nxstore', 'create', sys.argv[1]]\n"
            "assert cli.console_main() == 0\nimport numpy, os\n"
            "print('BLAS', os.environ['OPENBLAS_NUM_THREADS'])\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "c")], env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert f"BLAS {preset or 1}" in proc.stdout
