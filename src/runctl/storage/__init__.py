"""Checkpoints in object storage (S3 and S3-compatible servers).

Travels to hosts in the agent artifact, but unlike `core`, `agent` and `training` it is not for the
agent's own interpreter: `s3` and `uploader` import boto3 inside their functions and run in runctl's
tool environment on the host (agent/uploads.py builds it). `checksums` and `objects` are pure.
"""
