"""ec2launch's checks and launch request, without AWS: a bad flag is refused before any call."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from runctl.core.errors import UsageError
from runctl.providers.ec2launch import CreateRequest, Plan, check_local, launch_params, read_public_key, runctl_tags


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"ami": "ami-1", "image_name": "x*"}, "--ami and --image-name"),
        ({"key_name": "k", "ssh_key": "k.pub"}, "--key-name and --ssh-key"),
        ({"security_group": "sg-1", "ssh_from": "1.2.3.4/32"}, "--security-group and --ssh-from"),
        ({"max_price": 0.5}, "--max-price without --spot"),
        ({"address": "elastic"}, "--address"),
        ({"on_shutdown": "hibernate"}, "--on-shutdown"),
        ({"spot_fallback": "maybe"}, "--spot-fallback"),
        ({"volume_size": 0}, "--volume-size"),
        ({"private_ip": "10.0.0.300"}, "--private-ip"),
        ({"ssh_from": "everyone"}, "--ssh-from"),
        ({"idle_stop": "0"}, "--idle-stop"),
        ({"idle_stop": "soon"}, "--idle-stop"),
        ({"tags": ["Name=x"]}, "--name"),
        ({"tags": ["runctl:managed=false"]}, "runctl:"),
        ({"identity": "/nonexistent/key"}, "identity file"),
        ({"ssh_user": "-oProxyCommand=x"}, "--ssh-user"),
    ],
)
def test_bad_flags_are_refused_before_any_call(changes: dict[str, object], words: str) -> None:
    request = CreateRequest(instance_type="g5.xlarge", **changes)  # type: ignore[arg-type]
    with pytest.raises(UsageError) as caught:
        check_local(request)
    assert caught.value.hint and words in caught.value.message + " " + caught.value.hint


def test_the_public_key_is_read_and_named_by_its_fingerprint(tmp_path: Path) -> None:
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "me@laptop", "-f", str(key)], check=True)
    material, short = read_public_key(str(key) + ".pub")
    assert material.decode().startswith("ssh-ed25519 ") and b"me@laptop" not in material
    assert len(short) == 16 and read_public_key(str(key) + ".pub")[1] == short
    with pytest.raises(UsageError, match="private key"):
        read_public_key(str(key))


def _plan(**changes: object) -> Plan:
    request = CreateRequest(instance_type="g5.xlarge", name="t", tags=["team=nlp"], **changes)  # type: ignore[arg-type]
    return Plan(request, "ami-1", "dl", "/dev/sda1", "runctl-abc", None, "/home/me/.ssh/id", "subnet-1", "vpc-1",
                "sg-1", None, None, "private", 900.0, {"team": "nlp"}, 1.006)  # fmt: skip


def test_a_spot_instance_that_must_stop_on_power_off_is_a_persistent_request() -> None:
    plan = _plan(spot=True, on_shutdown="stop")
    params = launch_params(plan, runctl_tags(plan), spot=True)
    assert params["InstanceMarketOptions"]["SpotOptions"] == {
        "MaxPrice": "1.00600", "SpotInstanceType": "persistent", "InstanceInterruptionBehavior": "stop",
    }  # fmt: skip
    terminating = _plan(spot=True, on_shutdown="terminate")
    options = launch_params(terminating, runctl_tags(terminating), spot=True)["InstanceMarketOptions"]["SpotOptions"]
    assert (options["SpotInstanceType"], options["InstanceInterruptionBehavior"]) == ("one-time", "terminate")
    assert "InstanceMarketOptions" not in launch_params(plan, runctl_tags(plan), spot=False)


def test_the_instance_and_its_volume_carry_runctls_tags() -> None:
    plan = _plan(volume_size=200)
    params = launch_params(plan, runctl_tags(plan), spot=False)
    assert [spec["ResourceType"] for spec in params["TagSpecifications"]] == ["instance", "volume"]
    tags = {t["Key"]: t["Value"] for t in params["TagSpecifications"][0]["Tags"]}
    assert tags["runctl:managed"] == "true" and tags["Name"] == "t" and tags["team"] == "nlp"
    assert (tags["runctl:idle-stop"], tags["runctl:identity"], tags["runctl:address"]) == (
        "15m", "/home/me/.ssh/id", "private",
    )  # fmt: skip
    assert params["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == 200
    assert params["InstanceInitiatedShutdownBehavior"] == "stop" and params["ClientToken"]
