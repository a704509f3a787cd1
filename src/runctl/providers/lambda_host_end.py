"""`--host-terminate`: the Lambda instance terminates itself after its run when no controller is there.

Opt-in, because it needs the API key on the host: the key the user names is copied to
`<project>/.runctl/lambda_api_key` (0600, never in argv or the spec) beside a small config (API URL
and instance id), and the spec's `on_end` gets a command the agent runs once the run has ended, no
controller has claimed the step within `controller_grace`, and the checkpoints are in place (and,
with checkpoint uploads, verified in S3: then nothing is lost when the host goes): a
stdlib-only POST to `/instance-operations/terminate`, retried with backoff on 429, 5xx and network
errors. A controller that is present claims the step first and terminates with its proof instead.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Any

from ..core.errors import UsageError
from ..transport.ssh import SshTransport

HOST_URL_ENV = "RUNCTL_LAMBDA_HOST_API_URL"  # the API as the host reaches it (default: the controller's)
KEY_NAME = "lambda_api_key"
CONFIG_NAME = "lambda_terminate.json"
CONTROLLER_GRACE = 3.0

# Runs on the host with its own python3: argv[1] is the config file (url, instance_id, key_file).
TERMINATE = r"""
import json, sys, time, urllib.error, urllib.request
cfg = json.load(open(sys.argv[1]))
key = open(cfg["key_file"]).read().strip()
body = json.dumps({"instance_ids": [cfg["instance_id"]]}).encode()
for attempt in range(8):
    request = urllib.request.Request(cfg["url"] + "/instance-operations/terminate", data=body, method="POST",
        headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    try:
        urllib.request.urlopen(request, timeout=30).read()
        print("terminate of %s requested" % cfg["instance_id"], flush=True)
        sys.exit(0)
    except urllib.error.HTTPError as exc:
        if exc.code != 429 and exc.code < 500:
            print("terminate refused: HTTP %d %s" % (exc.code, exc.read()[:300]), flush=True)
            sys.exit(1)
    except OSError as exc:
        print("terminate failed: %s" % exc, flush=True)
    time.sleep(min(30, 2 ** attempt))
sys.exit(1)
"""


def read_key(path: str) -> str:
    """The key in FILE: a Lambda CLI key file (`api_key = ...`) or the key alone."""
    from .lambda_api import key_from_file

    file = Path(path).expanduser()
    try:
        text = file.read_text().strip()
    except OSError as exc:
        raise UsageError(
            "cannot read --host-terminate %s: %s" % (path, exc.strerror or exc), "name a file holding your API key"
        ) from None
    key = key_from_file(file) or (text if text and "\n" not in text and "=" not in text else "")
    if not key:
        raise UsageError(
            "no API key in --host-terminate %s" % path, "the file holds the key alone, or a line api_key = KEY"
        )
    return key


def install(transport: SshTransport, project_dir: str, instance_id: str, key: str, api_url: str) -> list[str]:
    """Copy the key and config to the host (0600) and return the on_end command that uses them."""
    import json

    folder = posixpath.join(project_dir, ".runctl")
    key_file, config = posixpath.join(folder, KEY_NAME), posixpath.join(folder, CONFIG_NAME)
    url = os.environ.get(HOST_URL_ENV) or api_url
    payload = json.dumps({"url": url, "instance_id": instance_id, "key_file": key_file})
    import shlex

    values = {"d": folder, "k": key_file, "c": config, "p": payload}
    quoted = {name: shlex.quote(value) for name, value in values.items()}
    transport.run(
        "umask 077 && mkdir -p %(d)s && cat > %(k)s && chmod 600 %(k)s && printf %%s %(p)s > %(c)s" % quoted,
        input=key.encode(),
    )
    return ["python3", "-c", TERMINATE, config]


def on_end(command: list[str], uploads_to_s3: bool) -> dict[str, Any]:
    """The spec's on_end block; with checkpoint uploads, the terminate waits for them verified in S3."""
    return {
        "command": command,
        "action": "terminate",
        "host_terminate": True,
        "after": ["checkpoints_in_place", *(["checkpoints_in_s3"] if uploads_to_s3 else [])],
        "controller_grace": CONTROLLER_GRACE,
    }
