from runctl.cli.main import run

run()
