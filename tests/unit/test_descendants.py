"""The process-tree walk of descendant tracking, on made-up /proc snapshots."""

from __future__ import annotations

from runctl.agent.descendants import ProcInfo, _unescape, descendants_of


def table(*rows: tuple[int, int]) -> dict[int, ProcInfo]:
    """pid -> ProcInfo from (pid, ppid) pairs."""
    return {pid: ProcInfo(ppid, pid, "S", str(pid)) for pid, ppid in rows}


def test_every_process_whose_parent_chain_leads_to_the_root_and_nothing_else() -> None:
    procs = table((1, 0), (10, 1), (11, 10), (12, 11), (13, 11), (20, 1), (21, 20))
    assert sorted(descendants_of([10], procs)) == [11, 12, 13]
    assert descendants_of([12], procs) == []
    assert sorted(descendants_of([11, 20], procs)) == [12, 13, 21]


def test_a_parent_loop_in_a_racy_snapshot_ends() -> None:
    procs = table((10, 1), (11, 12), (12, 11), (13, 10))
    assert descendants_of([10], procs) == [13]
    assert sorted(descendants_of([11], procs)) == [12]


def test_mountinfo_escapes() -> None:
    assert _unescape(r"/sys/fs/cgroup/my\040dir") == "/sys/fs/cgroup/my dir"
    assert _unescape("/plain") == "/plain"
