"""Small helpers shared by the tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import torch

from timetuner_plugins.sets.tuned_set import TunedSet

REPO = Path(__file__).resolve().parents[1]
COMFYUI = os.environ.get("COMFYUI_PATH")  # a ComfyUI checkout for the server tests (they skip without it)
WORKFLOWS = REPO / "example_workflows" / "api"


def noise(n: int, seed: int = 0, shape=(1, 8, 8)) -> torch.Tensor:
    """Standard-normal noise, reproducible from ``seed``."""
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))


def make_set(**overrides) -> TunedSet:
    """A small valid tuned set; ``overrides`` replace its fields."""
    sigmas = torch.tensor([80.0, 10.0, 1.0, 0.1, 0.0])
    ev = sigmas[:-1].clone()
    fields = dict(
        sigmas=sigmas,
        eval_sigmas=ev,
        tau=ev * torch.tensor([1.05, 0.97, 1.0, 1.1]),
        model_id="m",
        model_fingerprint="ab" * 32,
        sampler="ddim",
        schedule="karras",
        objective="final",
        mode="joint",
        iterations=10,
        seed=3,
        data_source="teacher",
        sampler_options={"eta": 0.0},
        metrics_before={"fd": 2.0},
        metrics_after={"fd": 1.0},
    )
    fields.update(overrides)
    return TunedSet(**fields)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, base: Path):
        self.base, self.port = base, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(base / "server.log", "w")
        python = os.environ.get("COMFYUI_PYTHON", sys.executable)
        self.proc = subprocess.Popen(
            [
                python,
                "main.py",
                "--cpu",
                "--listen",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--base-directory",
                str(base),
                "--disable-api-nodes",
                "--disable-metadata",
            ],
            cwd=COMFYUI,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited: see {base / 'server.log'}")
            try:
                self.get("/object_info/TimeTunerApplyTunedSet")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        raise RuntimeError("ComfyUI did not start within 180 s")

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, prompt: dict) -> tuple[int, dict]:
        body = json.dumps({"prompt": prompt, "client_id": uuid.uuid4().hex}).encode()
        req = urllib.request.Request(self.url + "/prompt", body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def run(self, prompt: dict, timeout: float = 600) -> dict:
        status, reply = self.post(prompt)
        assert status == 200, reply
        pid = reply["prompt_id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{pid}")
            if (
                pid in history
                and history[pid]["status"].get("completed") is not None
                and history[pid]["status"]["status_str"] in ("success", "error")
            ):
                return history[pid]
            time.sleep(0.3)
        raise TimeoutError(f"prompt {pid} did not finish in {timeout} s")

    def images(self, entry: dict) -> list[np.ndarray]:
        import matplotlib.image as mpimg

        out = []
        for node in entry["outputs"].values():
            for img in node.get("images", []):
                path = self.base / "output" / img["subfolder"] / img["filename"]
                out.append(mpimg.imread(path)[..., :3])
        return out

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def load(name: str) -> dict:
    return json.loads((WORKFLOWS / name).read_text())


def ok(entry: dict) -> bool:
    return entry["status"]["status_str"] == "success"


def error_message(entry: dict) -> str:
    return " ".join(
        str(d.get("exception_message", "")) for e, d in entry["status"]["messages"] if e == "execution_error"
    )


def interruptible(cmd: list[str], **kwargs) -> subprocess.Popen:
    """Start ``cmd`` so that SIGINT reaches it as Ctrl-C in a terminal would: a shell that runs the tests in the
    background (`make test &`) starts them with SIGINT ignored, which a child inherits, and a Python started so
    never raises KeyboardInterrupt."""
    return subprocess.Popen(cmd, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kwargs)
