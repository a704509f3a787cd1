"""The start pipeline every provider goes through, driven in-process with a counted test provider
(real local agent and processes): a failure at each step leaves the documented record and releases
the host it acquired; a finished run gets the controller's end-of-run step once."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runctl import controller, providers
from runctl.core import layout
from runctl.core.errors import HostError
from runctl.pipeline import StartRequest, start
from runctl.store import Store, host_key
from tests.support.counted_provider import CountedProvider

QUICK = "import time\nprint('hello', flush=True)\ntime.sleep(0.3)\nprint('bye')\n"


@pytest.fixture
def counted(runctl_home: Path) -> Iterator[CountedProvider]:
    providers.register("counted", "tests.support.counted_provider:CountedProvider")
    provider = providers.get("counted")
    assert isinstance(provider, CountedProvider)
    yield provider
    providers.REGISTRY.pop("counted", None)
    providers._LOADED.pop("counted", None)


def request_for(project: Path, script: str = "quick.py") -> StartRequest:
    (project / script).write_text(QUICK)
    return StartRequest("counted", str(project / script), str(project), python=sys.executable)


@pytest.mark.parametrize("step", ["connect", "sync", "bootstrap", "launch"])
def test_a_failed_step_leaves_nothing_and_releases_the_acquired_host(
    counted: CountedProvider, project: Path, step: str
) -> None:
    counted.fail_at = step
    store = Store()
    with pytest.raises(HostError, match="%s failed" % step):
        start(store, request_for(project))
    assert store.list(include_all=True) == [], "a failed start left a record"
    assert not (project / layout.RUNS_DIR).exists() or not list((project / layout.RUNS_DIR).iterdir())
    assert len(counted.acquired) == 1
    assert counted.released == [(counted.acquired[0], "terminate")]
    host = store.host(host_key("counted", counted.acquired[0]))
    assert host is not None and host["state"] == "terminated", "the release was not recorded as read back"
    assert [u["state"] for u in store.usage(host["host_key"])] == ["provisioning", "running"]


def test_a_launch_that_fails_after_the_agent_started_keeps_the_run_and_its_host(
    counted: CountedProvider, project: Path
) -> None:
    counted.fail_at = "launch-after-start"
    store = Store()
    with pytest.raises(HostError, match="may have started anyway"):
        start(store, request_for(project))
    (row,) = store.list(include_all=True)
    assert counted.released == [], "the host of a live run was released"
    assert row["host_key"] == host_key("counted", counted.acquired[0])
    ended = controller.follow(store, row, None, 30)
    assert ended["status"] == "completed"
    # The run is over: now the controller's end step releases the host, once.
    assert counted.released == [(counted.acquired[0], "terminate")]


def test_a_run_ends_with_one_release_confirmed_and_recorded(counted: CountedProvider, project: Path) -> None:
    store = Store()
    spec, _ = start(store, request_for(project))
    row = store.get(spec.run_id)
    assert row is not None
    kinds = [e["kind"] for e in store.events(spec.run_id)]
    assert kinds[:2] == ["provisioning", "host"] and "launched" in kinds
    stored = json.loads((Path(spec.run_dir) / layout.SPEC).read_text())
    assert stored["on_end"] == {"command": None, "after": ["checkpoints_in_place"], "controller_grace": 0}
    assert "controller" not in stored, "controller-only data travelled to the host"

    assert controller.follow(store, row, None, 30)["status"] == "completed"
    controller.refresh(store, store.get(spec.run_id) or row)  # seeing it ended again changes nothing
    assert counted.released == [(counted.acquired[0], "terminate")]
    host = store.host(row["host_key"])
    assert host is not None and host["state"] == "terminated"
    result = json.loads((Path(spec.run_dir) / layout.ON_END_RESULT).read_text())
    assert result["by"] == "controller" and result["release"] == {"action": "terminate", "state": "terminated"}
    claim = json.loads((Path(spec.run_dir) / layout.ON_END_CLAIM).read_text())
    assert claim["by"] == "controller"
    assert [e["kind"] for e in store.events(spec.run_id)].count("on_end") == 1


def test_a_command_that_cannot_start_leaves_nothing(counted: CountedProvider, project: Path) -> None:
    from runctl.core.errors import UsageError

    request = request_for(project)
    request.python = str(project / "no-such-python")
    with pytest.raises(UsageError):
        start(Store(), request)
    assert Store().list(include_all=True) == []
    assert counted.released == [(counted.acquired[0], "terminate")]


def test_a_start_whose_controller_died_after_acquiring_is_lost_and_its_host_released(
    counted: CountedProvider, project: Path
) -> None:
    """The controller was killed between acquire and launch: the next look marks the run lost and
    releases the host it had acquired (no cloud host outlives a dead start)."""
    import subprocess

    from runctl import providers as registry
    from runctl.core import status as st
    from runctl.pipeline import Start, build_spec

    store = Store()
    request = request_for(project)
    spec, root = build_spec(registry.get("counted"), request)
    dead = subprocess.Popen(["true"])
    dead.wait()
    starting = Start(store, counted, request, spec, root)
    starting.owner.update(pid=dead.pid, start=0)
    store.add_run(starting.record(), {"kind": "counted"}, {"status": st.PROVISIONING, "seq": 0})
    starting.acquire()  # ... and the controller dies here

    run = controller.refresh(store, store.get(spec.run_id) or {})
    assert run["status"] == "lost"
    assert "before the run was launched" in run["termination_message"]
    assert counted.released == [(counted.acquired[0], "terminate")]
    host = store.host(host_key("counted", counted.acquired[0]))
    assert host is not None and host["state"] == "terminated"
