"""A fake of the Lambda Cloud API (v1.8.x), faithful to the published document where runctl depends on it.

Served over real HTTP (a thread in the test process) at `/api/v1`: Bearer or Basic auth with one
key; `{"data": ...}` and `{"error": {"code", "message", "suggestion"}}` bodies with the documented
codes and HTTP statuses; `GET /instances`, `GET /instances/{id}`, `GET /instance-types` (prices in
cents, regions with capacity), `POST /instance-operations/launch|terminate`, `GET|POST /ssh-keys`,
`DELETE /ssh-keys/{id}`. Instances go `booting -> active -> terminating -> terminated`, each step
taking time; `ip` is null while booting and then the address of a real sshd test host; terminated
instances stay listed for a while, then are gone (404). Capacity is counted per type and region.
Requests faster than the rate limits get 429.

Fault injection (each consumed as it fires): `burst_429(n)`, `fail_next("POST", "/instance-
operations/terminate", 500)`, `fail_get_after_launch(n)`, `capacity_gone_after_types(type)`,
`lose_launch_answer()` (the instance is made, the answer is a 500).
`calls` records every request (time, method, path, status) for assertions and the benchmark.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

API_KEY = "secret_runctl-test_0123456789abcdef"
PREFIX = "/api/v1"

REGIONS = {
    "us-east-1": "Virginia, USA",
    "us-west-1": "California, USA",
    "europe-central-1": "Germany",
}
TYPES: dict[str, dict[str, Any]] = {
    "gpu_1x_a10": {
        "description": "1x A10 (24 GB PCIe)",
        "gpu_description": "A10 (24 GB PCIe)",
        "price": 75,
        "specs": {"vcpus": 30, "memory_gib": 200, "storage_gib": 1400, "gpus": 1},
    },
    "gpu_1x_h100_pcie": {
        "description": "1x H100 (80 GB PCIe)",
        "gpu_description": "H100 (80 GB PCIe)",
        "price": 249,
        "specs": {"vcpus": 26, "memory_gib": 200, "storage_gib": 1000, "gpus": 1},
    },
    "gpu_8x_a100": {
        "description": "8x A100 (40 GB SXM4)",
        "gpu_description": "A100 (40 GB SXM4)",
        "price": 1032,
        "specs": {"vcpus": 124, "memory_gib": 1800, "storage_gib": 6000, "gpus": 8},
    },
}


def error(code: str, message: str, suggestion: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if suggestion is not None:
        body["suggestion"] = suggestion
    return {"error": body}


@dataclass
class FakeInstance:
    id: str
    type: str
    region: str
    name: str | None
    ssh_key: str
    tags: list[dict[str, str]]
    address: str
    launched_at: float
    terminate_at: float | None = None


@dataclass
class Fault:
    method: str
    path: str  # a prefix of the path after /api/v1
    status: int
    code: str
    times: int


@dataclass
class LambdaFake:
    """The account: its key, SSH keys, instances, capacity and faults; `url` once started."""

    addresses: list[str]
    boot_seconds: float = 1.0
    terminate_seconds: float = 1.0
    linger_seconds: float = 30.0
    request_interval: float = 0.0  # the rate limit (seconds between requests); 0 = none
    launch_interval: float = 0.0
    key: str = API_KEY
    account_inactive: bool = False
    quota: int | None = None  # instances the account may have at once (global/quota-exceeded past it)
    capacity: dict[tuple[str, str], int] = field(default_factory=dict)
    ssh_keys: list[dict[str, str]] = field(default_factory=list)
    instances: dict[str, FakeInstance] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    calls: list[tuple[float, str, str, int, str]] = field(default_factory=list)  # t, method, path, status, client
    after_types: list[str] = field(default_factory=list)  # types whose capacity goes after the next GET types
    get_failures_after_launch: int = 0
    lost_launch_answers: int = 0  # launches that happen but answer 500 (the SkyPilot #2261 case)
    lock: threading.RLock = field(default_factory=threading.RLock)
    last_request: float = 0.0
    last_launch: float = 0.0
    server: ThreadingHTTPServer | None = None
    bind: str = "127.0.0.1"  # 0.0.0.0 so that hosts in network namespaces reach it (at their gateway)

    # ---- running -------------------------------------------------------------------------------

    def start(self) -> LambdaFake:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake.handle(self, "GET")

            def do_POST(self) -> None:
                fake.handle(self, "POST")

            def do_DELETE(self) -> None:
                fake.handle(self, "DELETE")

        self.server = ThreadingHTTPServer((self.bind, 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return "http://127.0.0.1:%d%s" % (self.server.server_address[1], PREFIX)

    def url_from(self, address: str) -> str:
        """The API's URL as a host reaches it (its gateway address)."""
        assert self.server is not None
        return "http://%s:%d%s" % (address, self.server.server_address[1], PREFIX)

    def env(self, key: str | None = None) -> dict[str, str]:
        """What a CLI subprocess needs to use this account (short limits, quick backoff and polls)."""
        return {
            "RUNCTL_LAMBDA_API_URL": self.url,
            "LAMBDA_API_KEY": self.key if key is None else key,
            "RUNCTL_LAMBDA_RATE": "%g,%g" % (self.request_interval * 1.2, self.launch_interval * 1.2),
            "RUNCTL_LAMBDA_BACKOFF": "0.05,0.4",
            "RUNCTL_LAMBDA_POLL": "0.1",
        }

    def reset(self) -> None:
        with self.lock:
            self.instances.clear()
            self.faults.clear()
            self.calls.clear()
            self.after_types.clear()
            self.get_failures_after_launch = 0
            self.lost_launch_answers = 0
            self.account_inactive = False
            self.quota = None
            self.boot_seconds = 1.0
            self.capacity = {(t, r): 2 for t in TYPES for r in REGIONS}
            self.ssh_keys = [{"id": secrets.token_hex(16), "name": "runctl-test", "public_key": "ssh-ed25519 AAAA x"}]

    # ---- fault injection -----------------------------------------------------------------------

    def fail_next(self, method: str, path: str, status: int, times: int = 1, code: str = "") -> None:
        default = {429: "global/rate-limited", 500: "global/internal-error", 503: "provider/internal-unavailable"}
        self.faults.append(Fault(method, path, status, code or default.get(status, "global/error"), times))

    def burst_429(self, times: int) -> None:
        self.fail_next("*", "/", 429, times)

    def lose_launch_answer(self, times: int = 1) -> None:
        """The next launch creates its instance, then answers 500 as if it had failed."""
        self.lost_launch_answers = times

    def fail_get_after_launch(self, times: int) -> None:
        self.get_failures_after_launch = times

    def capacity_gone_after_types(self, instance_type: str) -> None:
        self.after_types.append(instance_type)

    def set_capacity(self, instance_type: str, region: str, count: int) -> None:
        with self.lock:
            self.capacity[(instance_type, region)] = count

    # ---- state ---------------------------------------------------------------------------------

    def status_of(self, instance: FakeInstance, now: float) -> str:
        if instance.terminate_at is not None:
            return "terminated" if now - instance.terminate_at >= self.terminate_seconds else "terminating"
        return "active" if now - instance.launched_at >= self.boot_seconds else "booting"

    def visible(self, instance: FakeInstance, now: float) -> bool:
        if instance.terminate_at is None:
            return True
        return now - instance.terminate_at < self.terminate_seconds + self.linger_seconds

    def live(self) -> list[FakeInstance]:
        """Instances not terminated yet (what a leaked bill would be)."""
        now = time.time()
        with self.lock:
            return [i for i in self.instances.values() if self.status_of(i, now) != "terminated"]

    def body_of(self, instance: FakeInstance, now: float) -> dict[str, Any]:
        status = self.status_of(instance, now)
        kind = TYPES[instance.type]
        data: dict[str, Any] = {
            "id": instance.id,
            "status": status,
            "ssh_key_names": [instance.ssh_key],
            "file_system_names": [],
            "region": {"name": instance.region, "description": REGIONS[instance.region]},
            "instance_type": self.type_body(instance.type, kind),
            "hostname": "%s.cloud.lambda.ai" % instance.id[:12],
            "actions": {
                "migrate": {"available": False, "reason_code": "not-supported", "reason_description": "n/a"},
                "rebuild": {"available": False, "reason_code": "not-supported", "reason_description": "n/a"},
                "restart": {"available": status == "active"},
                "cold_reboot": {"available": status == "active"},
                "terminate": {"available": status in ("booting", "active")},
            },
            "tags": instance.tags,
        }
        if instance.name is not None:
            data["name"] = instance.name
        if status != "booting":
            data["ip"] = instance.address
            data["private_ip"] = instance.address
        return data

    @staticmethod
    def type_body(name: str, kind: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": name,
            "description": kind["description"],
            "gpu_description": kind["gpu_description"],
            "price_cents_per_hour": kind["price"],
            "specs": dict(kind["specs"]),
        }

    # ---- the HTTP side -------------------------------------------------------------------------

    def handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        path = request.path.split("?", 1)[0]
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length) if length else b""
        status, body = self.answer(method, path, raw, request.headers.get("Authorization") or "")
        payload = json.dumps(body).encode()
        with self.lock:
            self.calls.append((time.time(), method, path, status, request.client_address[0]))
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(payload)))
        if status == 429:
            request.send_header("Retry-After", "0")
        request.end_headers()
        request.wfile.write(payload)

    def authorised(self, header: str) -> bool:
        kind, _, value = header.partition(" ")
        if kind == "Bearer":
            return value == self.key
        if kind == "Basic":
            try:
                return base64.b64decode(value).decode() == self.key + ":"
            except ValueError:
                return False
        return False

    def answer(self, method: str, path: str, raw: bytes, auth: str) -> tuple[int, dict[str, Any]]:
        if not path.startswith(PREFIX + "/"):
            return 404, error("global/object-does-not-exist", "Not found")
        route = path[len(PREFIX) :]
        with self.lock:
            now = time.time()
            limited = self.request_interval and now - self.last_request < self.request_interval
            self.last_request = now
            if limited:
                return 429, error("global/rate-limited", "Too many requests", "Slow down")
            for fault in self.faults:
                if fault.times > 0 and fault.method in ("*", method) and route.startswith(fault.path):
                    fault.times -= 1
                    return fault.status, error(fault.code, "Injected failure", "Try again shortly")
            if not self.authorised(auth):
                return 401, error(
                    "global/invalid-api-key",
                    "API key was invalid, expired, or deleted.",
                    "Check your API key or create a new one, then try again.",
                )
            if self.account_inactive:
                return 403, error(
                    "global/account-inactive",
                    "Your account is inactive.",
                    "Make sure you have verified your email address and have a valid payment method.",
                )
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                return 400, error("global/invalid-parameters", "Request body is not JSON")
            return self.route(method, route, body, now)

    def route(self, method: str, route: str, body: Any, now: float) -> tuple[int, dict[str, Any]]:
        if method == "GET" and route == "/instance-types":
            return 200, {"data": self.instance_types()}
        if method == "GET" and route == "/instances":
            return 200, {"data": [self.body_of(i, now) for i in self.instances.values() if self.visible(i, now)]}
        if method == "GET" and route.startswith("/instances/"):
            found = self.instances.get(route.split("/")[2])
            if found is None or not self.visible(found, now):
                return 404, error("global/object-does-not-exist", "Specified instance does not exist.")
            if self.get_failures_after_launch > 0:
                self.get_failures_after_launch -= 1
                return 500, error("global/internal-error", "Internal error", "Try again shortly")
            return 200, {"data": self.body_of(found, now)}
        if method == "POST" and route == "/instance-operations/launch":
            return self.launch(body, now)
        if method == "POST" and route == "/instance-operations/terminate":
            return self.terminate(body, now)
        if method == "GET" and route == "/ssh-keys":
            return 200, {"data": list(self.ssh_keys)}
        if method == "POST" and route == "/ssh-keys":
            name = (body or {}).get("name")
            if not isinstance(name, str) or not 1 <= len(name) <= 64:
                return 400, error("global/invalid-parameters", "name must be 1 to 64 characters")
            if any(k["name"] == name for k in self.ssh_keys):
                return 400, error("global/duplicate", "An SSH key named %r already exists" % name)
            key = {"id": secrets.token_hex(16), "name": name, "public_key": str((body or {}).get("public_key"))}
            self.ssh_keys.append(key)
            return 200, {"data": key}
        if method == "DELETE" and route.startswith("/ssh-keys/"):
            before = len(self.ssh_keys)
            self.ssh_keys = [k for k in self.ssh_keys if k["id"] != route.split("/")[2]]
            if len(self.ssh_keys) == before:
                return 400, error("global/object-does-not-exist", "Specified SSH key does not exist.")
            return 200, {"data": {}}
        return 404, error("global/object-does-not-exist", "No such endpoint: %s %s" % (method, route))

    def instance_types(self) -> dict[str, Any]:
        data = {
            name: {
                "instance_type": self.type_body(name, kind),
                "regions_with_capacity_available": [
                    {"name": region, "description": REGIONS[region]}
                    for region in REGIONS
                    if self.capacity.get((name, region), 0) > 0
                ],
            }
            for name, kind in TYPES.items()
        }
        for gone in self.after_types:
            for region in REGIONS:
                self.capacity[(gone, region)] = 0
        self.after_types.clear()
        return data

    def launch(self, body: Any, now: float) -> tuple[int, dict[str, Any]]:
        if self.launch_interval and now - self.last_launch < self.launch_interval:
            return 429, error("global/rate-limited", "Too many launch requests", "Wait 12 seconds")
        if not isinstance(body, dict):
            return 400, error("global/invalid-parameters", "Invalid request data.")
        region, kind, keys = body.get("region_name"), body.get("instance_type_name"), body.get("ssh_key_names")
        if region not in REGIONS:
            return 400, error("global/invalid-parameters", "Invalid region_name %r" % region)
        if kind not in TYPES:
            return 404, error("global/object-does-not-exist", "Instance type %r does not exist" % kind)
        if not isinstance(keys, list) or len(keys) != 1:
            return 400, error("global/invalid-parameters", "Exactly one SSH key must be specified")
        if not any(k["name"] == keys[0] for k in self.ssh_keys):
            return 404, error("global/object-does-not-exist", "SSH key %r does not exist" % keys[0])
        if "quantity" in body:
            return 400, error("global/invalid-parameters", "Unknown field 'quantity'")
        name = body.get("name")
        if name is not None and (not isinstance(name, str) or len(name) > 64):
            return 400, error("global/invalid-parameters", "name must be at most 64 characters")
        if self.capacity.get((kind, region), 0) <= 0:
            return 400, error(
                "instance-operations/launch/insufficient-capacity",
                "Not enough capacity to fulfill launch request.",
                "Choose an instance type with more availability, or try again later.",
            )
        if self.quota is not None and len(self.live()) >= self.quota:
            return 400, error("global/quota-exceeded", "Quota exceeded.", "Contact Support to increase your quota.")
        used = {i.address for i in self.live()}
        free = [a for a in self.addresses if a not in used]
        if not free:
            return 400, error(
                "instance-operations/launch/insufficient-capacity", "Not enough capacity to fulfill launch request."
            )
        self.last_launch = now
        self.capacity[(kind, region)] -= 1
        instance = FakeInstance(
            secrets.token_hex(16), kind, region, name, keys[0], list(body.get("tags") or []), free[0], now
        )
        self.instances[instance.id] = instance
        if self.lost_launch_answers > 0:
            self.lost_launch_answers -= 1
            return 500, error("global/internal-error", "Internal error", "Try again shortly")
        return 200, {"data": {"instance_ids": [instance.id]}}

    def terminate(self, body: Any, now: float) -> tuple[int, dict[str, Any]]:
        ids = (body or {}).get("instance_ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not ids:
            return 400, error("global/invalid-parameters", "instance_ids is required")
        found = []
        for instance_id in ids:
            instance = self.instances.get(instance_id)
            if instance is None or not self.visible(instance, now):
                return 404, error("global/object-does-not-exist", "Specified instance does not exist.")
            found.append(instance)
        for instance in found:
            if instance.terminate_at is None:
                instance.terminate_at = now
                self.capacity[(instance.type, instance.region)] += 1
        return 200, {"data": {"terminated_instances": [self.body_of(i, now) for i in found]}}
