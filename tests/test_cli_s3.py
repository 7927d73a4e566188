"""`nxstore create --extent-store s3://...` against a real SeaweedFS on 127.0.0.1: the choice is
recorded and used on reopen; bad input gives one `nxstore: error:` line and creates nothing."""

from __future__ import annotations

import os

import pytest
from test_cli import nx, one_error_line

import nxstore


def _env(s3server, home, **extra) -> dict[str, str]:  # noqa: ANN001
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["HOME"] = str(home)  # no ~/.aws of the machine's user
    env.update(extra)
    return env


def test_create_on_s3_is_recorded_and_reopened(tmp_path, s3server, s3_url):
    path = str(tmp_path / "c")
    proc = nx("create", path, "--block-size", "4K", "--extent-store", s3_url,
              "--s3-endpoint", s3server.endpoint, "--s3-cache-size", "64M",
              env=_env(s3server, tmp_path, **s3server.env))  # fmt: skip
    assert s3_url in proc.stdout
    with nxstore.Cluster.open(path, background=False) as c:
        remote = c.ctx.store._remote
        assert remote is not None and remote.backend.location == s3_url
        assert remote.cache_bytes == 64 << 20
    nx("info", path, env=_env(s3server, tmp_path, **s3server.env))


def test_create_with_a_credentials_file(tmp_path, s3server, s3_url):
    creds = tmp_path / "creds"
    creds.write_text("[default]\naws_access_key_id = {AWS_ACCESS_KEY_ID}\n"
                     "aws_secret_access_key = {AWS_SECRET_ACCESS_KEY}\n".format(**s3server.env))  # fmt: skip
    nx("create", tmp_path / "c", "--extent-store", s3_url, "--s3-endpoint", s3server.endpoint,
       "--s3-credentials-file", creds, env=_env(s3server, tmp_path))  # fmt: skip


@pytest.mark.parametrize("case", ["bad-url", "no-bucket", "unreachable", "no-credentials",
                                  "wrong-credentials", "missing-credentials-file"])  # fmt: skip
def test_create_errors_are_one_line_and_create_nothing(tmp_path, s3server, s3_url, case):
    path = tmp_path / "c"
    args = ["--extent-store", s3_url, "--s3-endpoint", s3server.endpoint]
    env = _env(s3server, tmp_path, **s3server.env)
    needle = {"bad-url": "s3://BUCKET", "no-bucket": "does not exist",
              "unreachable": "127.0.0.1:9", "no-credentials": "credentials",
              "wrong-credentials": "credentials refused",
              "missing-credentials-file": "does not exist"}[case]  # fmt: skip
    if case == "bad-url":
        args[1] = "gs://bucket/x"
    elif case == "no-bucket":
        args[1] = "s3://no-such-bucket/x"
    elif case == "unreachable":
        args[3] = "http://127.0.0.1:9"
    elif case == "no-credentials":
        env = _env(s3server, tmp_path)
    elif case == "wrong-credentials":
        env["AWS_SECRET_ACCESS_KEY"] = "wrong"
    else:
        args += ["--s3-credentials-file", str(tmp_path / "nope")]
    proc = nx("create", path, *args, rc=1, env=env)
    one_error_line(proc, needle)
    assert not path.exists()
