"""Transports run agent operations on a host and move files to and from it."""
