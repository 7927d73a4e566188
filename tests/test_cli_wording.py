"""CLI output speaks CLI: options as the command line spells them (`--with-snapshots`,
`--force`), intervals as `pd schedule --every` takes them (`10s`, not `0:00:10`), counts
with the right plural, and a wrong shared secret as one line that says which site, where,
and that the secrets differ (no WARNING line besides it on the client)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from test_cli import nx, one_error_line

from nxstore.cli import build_parser
from nxstore.cli.common import API_OPTIONS, cli_words

sys.path.insert(0, str(Path(__file__).parent / "replication"))
from sites_helper import Daemon  # noqa: E402


def options_of(*command: str) -> set[str]:
    """The option strings of `nxstore COMMAND...`."""
    parser = build_parser()
    for word in command:
        (sub,) = [a for a in parser._actions if a.dest and a.choices and word in a.choices]
        parser = sub.choices[word]
    return {s for a in parser._actions for s in a.option_strings}


def test_api_keywords_become_the_options_that_set_them():
    assert cli_words("vDisk 'db' has 2 snapshot(s); pass with_snapshots=True to delete them "
                     "too") == "vDisk 'db' has 2 snapshot(s); pass --with-snapshots to delete them too"
    assert cli_words("migrate it instead, or activate with force=True to fence that site off"
                     ) == "migrate it instead, or activate with --force to fence that site off"
    assert cli_words("force=Truex with_snapshots=True2") == "force=Truex with_snapshots=True2"
    # Each option named exists on the command whose library call says the keyword.
    assert API_OPTIONS["with_snapshots=True"] in options_of("vdisk", "delete")
    assert API_OPTIONS["force=True"] in options_of("pd", "activate")


def test_messages_use_cli_words(tmp_path):
    path = tmp_path / "c"
    nx("create", path, "--block-size", "4K")
    for name in ("db", "log"):
        nx("vdisk", "create", path, name, "1M")
    nx("snapshot", "create", path, "db@s1")
    err = one_error_line(nx("vdisk", "delete", path, "db", rc=1), "--with-snapshots")
    assert "=True" not in err
    nx("vdisk", "delete", path, "db", "--with-snapshots")

    assert nx("vm", "create", path, "web", "--vdisk", "log").stdout.startswith(
        "created VM web (1 vDisk, power ")
    assert nx("pd", "create", path, "pd-web", "web").stdout.strip() == (
        "created protection domain pd-web (1 entity)")
    nx("vdisk", "create", path, "a", "1M")
    nx("vdisk", "create", path, "b", "1M")
    assert "(2 entities)" in nx("pd", "create", path, "pd-ab", "a", "b").stdout

    err = one_error_line(nx("pd", "schedule", path, "pd-web", "--every", "10s", "--keep", "2",
                            rc=1), "not 10s")
    assert "0:00:10" not in err
    one_error_line(nx("pd", "schedule", path, "pd-web", "--every", "1h", "--keep", "0", rc=2),
                   "--keep", "bad count '0'")
    nx("site", "add", path, "canada", "127.0.0.1:1", "--secret-file", _secret(tmp_path, "s"))
    err = one_error_line(nx("pd", "schedule", path, "pd-web", "--every", "1h", "--keep", "2",
                            "--remote", "canada=0", rc=1), "--remote canada", "bad count '0'")
    assert "keep_remote" not in err
    added = nx("pd", "schedule", path, "pd-web", "--every", "90m", "--keep", "2",
               "--remote", "canada=3").stdout
    assert added.strip() == "added schedule 1: every 1h30m, keep 2, remote canada=3"
    listed = nx("pd", "schedule", path, "pd-web").stdout
    assert listed.startswith("1: every 1h30m, keep 2, remote canada=3, enabled, next ")
    assert "schedule 1: every 1h30m, keep 2, remote canada=3, next " in nx(
        "pd", "show", path, "pd-web").stdout


def _secret(tmp_path: Path, name: str, text: str = "a long shared secret") -> Path:
    path = tmp_path / name
    path.write_text(text + "\n")
    os.chmod(path, 0o600)
    return path


@pytest.mark.parametrize("verbose", [False, True])
def test_wrong_secret_is_one_line_naming_site_and_address(tmp_path, verbose):
    paris, canada = tmp_path / "paris", tmp_path / "canada"
    for path in (paris, canada):
        nx("create", path, "--block-size", "4K")
    nx("vdisk", "create", paris, "db", "1M")
    d = Daemon.start(str(canada), str(_secret(tmp_path, "right")))
    try:
        nx("site", "add", paris, "canada", d.address, "--secret-file",
           _secret(tmp_path, "wrong", "another long secret"))
        proc = nx("replicate", paris, "db", "canada", *(["-v"] if verbose else []), rc=1)
        text = (f"nxstore: error: authentication with site 'canada' at {d.address} failed: "
                "the shared secrets differ")
        lines = proc.stderr.splitlines()
        if verbose:  # the handshake failure is logged, at INFO, for who asked to see it
            assert lines[-1] == text and any(
                "INFO" in x and "handshake (client side" in x for x in lines), proc.stderr
            assert not any("WARNING" in x for x in lines), proc.stderr
        else:
            assert lines == [text]
        log = d.stop()
        assert "WARNING" in log and "handshake (server side" in log, log  # the daemon warns
    finally:
        d.cleanup()
