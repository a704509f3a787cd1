"""The run agent: one supervisor process per run, on the host, standard library only (Python >= 3.8).

It is shipped to hosts as a zip artifact together with `runctl.core` and `runctl.training`.
"""

AGENT_PROTOCOL = 1
