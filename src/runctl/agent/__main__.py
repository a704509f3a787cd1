import sys

from runctl.agent.cli import main

sys.exit(main())
