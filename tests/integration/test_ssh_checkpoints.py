"""Checkpoints a script saves outside checkpoints/ are listed and downloaded from an SSH host."""

from __future__ import annotations

from pathlib import Path

from tests.integration.test_ssh import SshEnv, make_project

SAVES_EVERYWHERE = {
    "save.py": """
        import os

        for rel in ("checkpoints/a.pt", "out/ckpt.pt", "lightning_logs/version_0/checkpoints/epoch=0.ckpt",
                    "out/notes.txt", "runs/best.pkl"):
            os.makedirs(os.path.dirname(rel), exist_ok=True)
            with open(rel, "wb") as handle:
                handle.write(rel.encode())
        print("saved")
    """
}


def test_checkpoints_outside_the_checkpoint_dir_are_downloaded(sshenv: SshEnv, tmp_path: Path) -> None:
    host = sshenv.hosts[0]
    project = make_project(tmp_path, "s-globs", SAVES_EVERYWHERE)
    result = sshenv.cli("ssh", "train", sshenv.dest(host), "save.py", "--wait", "-o", "json", cwd=project)
    assert result.code == 0, result.err
    run_id = result.json["run_id"]
    listing = sshenv.cli("checkpoint", "list", run_id, "-o", "json", cwd=project).json
    assert sorted(f["path"] for f in listing["files"]) == [
        "a.pt",
        "lightning_logs/version_0/checkpoints/epoch=0.ckpt",
        "out/ckpt.pt",
    ]
    local = project / "checkpoints" / run_id
    assert (local / "a.pt").read_bytes() == b"checkpoints/a.pt"
    assert (local / "out" / "ckpt.pt").read_bytes() == b"out/ckpt.pt"
    assert (local / "lightning_logs/version_0/checkpoints/epoch=0.ckpt").is_file()

    # --checkpoint-glob replaces the defaults.
    result = sshenv.cli(
        "ssh", "train", sshenv.dest(host), "save.py", "--wait", "-o", "json", "--checkpoint-glob", "runs/*.pkl",
        cwd=project,
    )  # fmt: skip
    assert result.code == 0, result.err
    second = result.json["run_id"]
    assert (project / "checkpoints" / second / "runs" / "best.pkl").read_bytes() == b"runs/best.pkl"
    assert not (project / "checkpoints" / second / "out").exists()
