"""Pure, standard-library-only rules shared by the controller and the agent.

This package travels to hosts inside the agent artifact, so it must import nothing outside the
standard library and stay compatible with Python 3.8.
"""
