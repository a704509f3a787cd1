"""Providers as a user meets them: a capability a provider lacks is refused before anything is
done (exit 2, the provider's sentence and the command that works instead); every real start saves
its host in the store, also in a store written by runctl 1 (schema 1)."""

from __future__ import annotations

import re
import sqlite3
import sys
from pathlib import Path

from runctl.store import Store, host_key
from tests.integration.test_ssh import (
    SshEnv,
    make_project,
)
from tests.support.runs import write_script
from tests.unit.test_store_hosts import V1_DDL

QUICK = "print('hello')\n"


def make_v1_store(home: Path) -> None:
    with sqlite3.connect(str(home / "runctl.db")) as raw:
        raw.executescript(V1_DDL)


def test_checkpoint_download_of_a_local_run_is_refused_by_its_provider(cli, project: Path) -> None:  # type: ignore[no-untyped-def]
    write_script(project, "quick.py", QUICK)
    started = cli("local", "train", "quick.py", "--python", sys.executable, "--wait")
    assert started.code == 0, started.err
    run_id = re.search(r"run ([0-9a-f]{8}) ", started.err).group(1)  # type: ignore[union-attr]
    before = sorted(p.name for p in project.iterdir())
    result = cli("checkpoint", "download", run_id)
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert lines == [
        "runctl: run %s is local; its checkpoints are already here" % run_id,
        "  see them with: runctl checkpoint list %s" % run_id,
    ]
    assert sorted(p.name for p in project.iterdir()) == before, "a refused action changed something"


def test_a_local_run_on_a_v1_store_saves_its_host(cli, project: Path, runctl_home: Path) -> None:  # type: ignore[no-untyped-def]
    make_v1_store(runctl_home)
    write_script(project, "quick.py", QUICK)
    started = cli("local", "train", "quick.py", "--python", sys.executable, "--wait")
    assert started.code == 0, started.err
    store = Store(runctl_home / "runctl.db")
    (row,) = store.list(include_all=True)
    (host,) = store.hosts()
    assert host["provider"] == "local" and row["host_key"] == host["host_key"]
    assert host["state"] == "running"
    kinds = [e["kind"] for e in store.events(row["run_id"])]
    assert kinds[:2] == ["provisioning", "host"], kinds
    assert kinds.count("on_end") == 1


def test_an_ssh_run_on_a_v1_store_saves_its_host(sshenv: SshEnv, tmp_path: Path) -> None:
    make_v1_store(sshenv.home)
    host = sshenv.hosts[0]
    project = make_project(tmp_path, "p-hosts", {"quick.py": QUICK})
    result = sshenv.cli("ssh", "train", sshenv.dest(host), "quick.py", "--wait", cwd=project)
    assert result.code == 0, result.err
    store = Store(sshenv.home / "runctl.db")
    (row,) = store.list(include_all=True)
    key = host_key("ssh", sshenv.dest(host))
    assert row["host_key"] == key
    saved = store.host(key)
    assert saved is not None and saved["address"] == host.address and saved["state"] == "running"
    kinds = [e["kind"] for e in store.events(row["run_id"])]
    assert kinds[:2] == ["provisioning", "host"], kinds
    assert "launched" in kinds and kinds.count("on_end") == 1
    assert set(row["transport"]) >= {"kind", "host", "home", "agent_path"}
    assert not {"controller", "local_root", "download_checkpoints"} & set(row["transport"])
