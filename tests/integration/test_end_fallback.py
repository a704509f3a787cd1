"""A host whose own end-of-run power-off failed is released through its provider's API by the next
controller that looks, so its bill never keeps running (counted test provider, real local agent)."""

from __future__ import annotations

import json
from pathlib import Path

from runctl import controller, providers
from runctl.core import layout
from runctl.pipeline import Start, build_spec
from runctl.store import Store
from tests.integration.test_pipeline import counted, request_for  # noqa: F401  (the fixture)
from tests.support.counted_provider import CountedProvider
from tests.support.runs import poll


def test_a_failed_host_power_off_is_followed_by_the_provider_release(
    counted: CountedProvider,  # noqa: F811
    project: Path,
) -> None:
    store = Store()
    request = request_for(project)
    provider = providers.get("counted")
    spec, root = build_spec(provider, request)
    # What a cloud run asks of its agent, with a power-off that fails (exit 1).
    spec.on_end = {"command": ["false"], "controller_grace": 0, "action": "terminate", "becomes": "stop"}
    Start(store, provider, request, spec, root).run()
    on_end = Path(spec.run_dir) / layout.ON_END_RESULT
    done = poll(lambda: on_end.exists() and json.loads(on_end.read_text()).get("ended_at"), 30, "the agent's step")
    assert done
    assert json.loads(on_end.read_text())["by"] == "agent"
    row = store.get(spec.run_id)
    assert row is not None
    seen = controller.refresh(store, row)
    assert seen["status"] == "completed"
    assert counted.released == [(counted.acquired[0], "terminate")]
    results = [e for e in store.events(spec.run_id) if e["kind"] == "on_end_result"]
    assert len(results) == 1 and results[0]["by"] == "controller" and results[0]["action"] == "terminate"
