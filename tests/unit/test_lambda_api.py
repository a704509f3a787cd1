"""The Lambda client's pure parts: where the key comes from, errors by code, the limiter, capacity choices."""

from __future__ import annotations

from pathlib import Path

import pytest

from runctl.core.errors import CloudError, UsageError
from runctl.providers import lambda_api as api
from runctl.providers.lambda_labs import LambdaCloud, capacity_hint, regions_with_capacity

TYPES = {
    "gpu_1x_a10": {"instance_type": {"name": "gpu_1x_a10"}, "regions_with_capacity_available": [
        {"name": "us-east-1", "description": "Virginia"}, {"name": "us-west-1", "description": "California"}]},
    "gpu_8x_h100": {"instance_type": {"name": "gpu_8x_h100"}, "regions_with_capacity_available": []},
}  # fmt: skip


def test_key_file_is_read_from_its_api_key_line(tmp_path: Path) -> None:
    path = tmp_path / "lambda_keys"
    path.write_text("# comment\nother = x\napi_key = secret_abc\n")
    assert api.key_from_file(path) == "secret_abc"
    assert api.key_from_file(tmp_path / "missing") is None
    path.write_text("api_key =\n")
    assert api.key_from_file(path) is None


def test_key_order_env_then_config_then_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNCTL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("LAMBDA_API_KEY", raising=False)
    with pytest.raises(UsageError) as missing:
        api.api_key()
    assert "no Lambda API key" in missing.value.message and "LAMBDA_API_KEY" in str(missing.value.hint)
    (tmp_path / ".lambda_cloud").mkdir()
    (tmp_path / ".lambda_cloud" / "lambda_keys").write_text("api_key = from-file\n")
    assert api.api_key() == "from-file"
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "config.toml").write_text('[lambda]\napi_key = "from-config"\n')
    assert api.api_key() == "from-config"
    monkeypatch.setenv("LAMBDA_API_KEY", "from-env")
    assert api.api_key() == "from-env"


@pytest.mark.parametrize(
    "status,code,kind,words",
    [
        (401, "global/invalid-api-key", CloudError, "rejected the API key"),
        (403, "global/account-inactive", CloudError, "inactive"),
        (400, "global/quota-exceeded", CloudError, "quota exceeded"),
        (400, "global/invalid-parameters", UsageError, "refused the request"),
        (404, "global/object-does-not-exist", UsageError, "Specified instance does not exist."),
        (400, "instance-operations/launch/insufficient-capacity", CloudError, "no capacity"),
        (400, "global/something-new", CloudError, "global/something-new"),
    ],
)
def test_errors_are_mapped_by_code(status: int, code: str, kind: type, words: str) -> None:
    body = {"error": {"code": code, "message": "Specified instance does not exist.", "suggestion": "fix it"}}
    error = api.error_for(status, body)
    assert type(error) is kind and words in error.message and error.hint
    assert error.exit_code == (2 if kind is UsageError else 4)


def test_a_body_that_is_not_lambdas_still_reads() -> None:
    error = api.error_for(502, None)
    assert isinstance(error, CloudError) and "http-502" in error.message


def test_limiter_spaces_requests_and_launches() -> None:
    now = [100.0]
    limiter = api.Limiter(1.0, 12.0, clock=lambda: now[0])
    limiter.wait()
    assert limiter.next_at == 101.0
    now[0] = 101.0
    limiter.wait(launch=True)
    assert (limiter.next_at, limiter.next_launch_at) == (102.0, 113.0)
    limiter.defer(30.0)
    assert limiter.next_at == 131.0


def test_rate_env_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(api.RATE_ENV, "0.5,6")
    assert api._pair(api.RATE_ENV, api.DEFAULT_RATE) == (0.5, 6.0)
    monkeypatch.setenv(api.RATE_ENV, "fast")
    with pytest.raises(UsageError):
        api._pair(api.RATE_ENV, api.DEFAULT_RATE)


def test_region_choice_names_the_regions_with_capacity() -> None:
    cloud = LambdaCloud(api=object())  # type: ignore[arg-type]
    assert cloud.choose_region("gpu_1x_a10", "any", TYPES) == "us-east-1"
    assert cloud.choose_region("gpu_1x_a10", "us-west-1", TYPES) == "us-west-1"
    with pytest.raises(CloudError) as elsewhere:
        cloud.choose_region("gpu_1x_a10", "europe-central-1", TYPES)
    assert "us-east-1, us-west-1" in str(elsewhere.value.hint)
    with pytest.raises(CloudError) as nowhere:
        cloud.choose_region("gpu_8x_h100", "any", TYPES)
    assert "types with capacity: gpu_1x_a10" in str(nowhere.value.hint)
    with pytest.raises(UsageError) as typo:
        cloud.choose_region("gpu_1x_a1O", "any", TYPES)
    assert "gpu_1x_a10" in str(typo.value.hint)
    assert regions_with_capacity(TYPES, "nope") == []
    assert "no type has capacity" in capacity_hint("x", [], {})
