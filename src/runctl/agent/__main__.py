"""Entry point of the agent (`python3 AGENT.pyz ...`); `sync-target` skips the CLI's imports (it runs per rsync)."""

import sys

if sys.argv[1:2] == ["sync-target"]:
    from runctl.agent.synctarget import main as sync_target

    sys.exit(sync_target(sys.argv[2:]))

from runctl.agent.cli import main

sys.exit(main())
