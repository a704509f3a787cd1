"""The S3 and instance-metadata test components behave like the real services where runctl relies on it."""

from __future__ import annotations

import json
import shlex
import urllib.error
import urllib.request

import pytest

from tests.support.imds import Imds
from tests.support.s3server import S3Server
from tests.support.sshhosts import SshTestHost


def call(imds: Imds, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(imds.endpoint + path, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def test_imds_fake_follows_the_imdsv2_token_flow(imds: Imds) -> None:
    ttl = "X-aws-ec2-metadata-token-ttl-seconds"
    assert call(imds, "PUT", "/latest/api/token")[0] == 400
    assert call(imds, "PUT", "/latest/api/token", {ttl: "0"})[0] == 400
    assert call(imds, "PUT", "/latest/api/token", {ttl: "21601"})[0] == 400
    assert call(imds, "GET", "/latest/api/token")[0] == 405
    status, token = call(imds, "PUT", "/latest/api/token", {ttl: "60"})
    assert status == 200 and token
    auth = {"X-aws-ec2-metadata-token": token}
    assert call(imds, "GET", "/latest/meta-data/instance-id")[0] == 401
    assert call(imds, "GET", "/latest/meta-data/instance-id", {"X-aws-ec2-metadata-token": "forged"})[0] == 401
    assert call(imds, "GET", "/latest/meta-data/instance-id", auth) == (200, imds.instance_id)
    assert call(imds, "GET", "/latest/meta-data/placement/region", auth) == (200, "us-east-1")
    assert call(imds, "GET", "/latest/meta-data/spot/instance-action", auth)[0] == 404
    assert call(imds, "GET", "/latest/meta-data/events/recommendations/rebalance", auth)[0] == 404
    notice = imds.schedule("stop", at=1796190000)
    status, body = call(imds, "GET", "/latest/meta-data/spot/instance-action", auth)
    assert status == 200 and json.loads(body) == notice == {"action": "stop", "time": "2026-12-02T05:40:00Z"}
    imds.rebalance()
    assert call(imds, "GET", "/latest/meta-data/events/recommendations/rebalance", auth)[0] == 200
    assert "spot/" in call(imds, "GET", "/latest/meta-data/", auth)[1].split()
    imds.expire_tokens()
    assert call(imds, "GET", "/latest/meta-data/instance-id", auth)[0] == 401
    with pytest.raises(ValueError):
        imds.schedule("reboot")


def test_boto3_takes_an_instance_roles_credentials_from_the_imds_fake(
    imds: Imds, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    import boto3

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    for key, value in imds.env().items():
        monkeypatch.setenv(key, value)
    imds.set_role("trainer", "AKIAROLE", "role-secret", token="role-token")
    credentials = boto3.session.Session().get_credentials()
    assert credentials is not None
    assert (credentials.access_key, credentials.secret_key, credentials.token) == (
        "AKIAROLE",
        "role-secret",
        "role-token",
    )
    assert credentials.method == "iam-role"


def test_seaweedfs_checks_signatures_and_answers_the_namespace_hosts(
    s3_server: S3Server, ssh_hosts: list[SshTestHost]
) -> None:
    bucket = s3_server.make_bucket()
    s3_server.client().put_object(Bucket=bucket, Key="k", Body=b"v")
    with pytest.raises(Exception, match="SignatureDoesNotMatch"):
        s3_server.client(secret="wrong", attempts=1).get_object(Bucket=bucket, Key="k")
    host = ssh_hosts[0]
    if not host.netns:
        pytest.skip("no network-namespace hosts here: the server is on 127.0.0.1")
    probe = "import urllib.request as u, urllib.error as e\n"
    probe += "try: u.urlopen('%s/', timeout=5)\nexcept e.HTTPError as x: print(x.code)\n"
    done = host.run("python3 -c %s" % shlex.quote(probe % s3_server.endpoint))
    assert done.stdout.strip() in ("200", "403"), done.stderr  # S3 answered (an unsigned request is refused)
