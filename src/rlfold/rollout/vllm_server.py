"""The server vLLM engine: rollouts from a vLLM OpenAI-compatible server, token in, token out.

The server is either one the user started (``url``) or one rlfold starts on a free loopback port
with the policy's model directory and stops when the engine is closed or the process exits. Each
row (prompt x sample) is one ``/v1/completions`` request whose prompt is the token ids themselves,
with its own seed, ``logprobs=0`` and ``return_token_ids``, sent ``concurrency`` at a time; the
response's token ids are what the trainer trains on (nothing is re-tokenised).

Weights (``sync``): ``reload`` writes the trainer's parameters as a model directory (``weights_dir``,
which the server must be able to read) and asks the server to reload from it in place (the
development endpoints ``/collective_rpc`` -> ``reload_weights`` and ``/reset_prefix_cache``; the
server needs ``VLLM_SERVER_DEV_MODE=1``); ``restart`` (only for a server rlfold started) writes the
same directory and starts the server again from it. ``auto``: ``restart`` for a server rlfold
started on vLLM's CPU backend (where an in-place reload leaves stale prepacked weights), else
``reload``. A server started by the user should run with ``--logprobs-mode processed_logprobs`` so
that sampled rows report the log-prob of the distribution they were drawn from.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Literal, Sequence

import torch

from rlfold.core import registry
from rlfold.core.errors import ConfigError, DataError
from rlfold.models.loading import resolve_model_path
from rlfold.rollout.assemble import batch_from_rows
from rlfold.rollout.base import EngineContext, GenerationRequest, encode_request, pad_id_of
from rlfold.rollout.sampling import SamplingParams
from rlfold.rollout.vllm_common import LOGPROBS_MODE, dtype_name, import_vllm, row_output, row_seed, sampling_kwargs
from rlfold.rollout.weight_sync import CheckpointWriter, WeightSync, specs_of

ENGINES = registry.ENGINES
_LOOPBACK = "127.0.0.1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_LOOPBACK, 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:  # pragma: no cover - a server that ignores SIGTERM
        proc.kill()
        proc.wait()


class _Server:
    """A ``vllm serve`` process rlfold started on loopback; stopped by ``stop`` or at exit."""

    def __init__(self, model_dir: str, tokenizer_dir: str, args: list[str], log_dir: str, timeout_s: float) -> None:
        self.port = _free_port()
        self.url = f"http://{_LOOPBACK}:{self.port}"
        self.log_path = os.path.join(log_dir, f"vllm-server-{self.port}.log")
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
               "--tokenizer", tokenizer_dir, "--served-model-name", "policy", "--host", _LOOPBACK,
               "--port", str(self.port), "--logprobs-mode", LOGPROBS_MODE, "--generation-config", "vllm",
               "--disable-uvicorn-access-log", *args]
        env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "VLLM_LOGGING_LEVEL": os.environ.get(
            "VLLM_LOGGING_LEVEL", "WARNING"), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        self._finalizer = weakref.finalize(self, _stop, self.proc)
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ConfigError(f"vllm_server engine: the vLLM server exited with code {self.proc.returncode} "
                                  f"while starting; its log: {self.log_path}\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise ConfigError(f"vllm_server engine: the vLLM server was not ready after {timeout_s:g} s "
                          f"(startup_timeout_s); its log: {self.log_path}\n{self.tail()}")

    def tail(self, n: int = 15) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        self._finalizer()
        self._log.close()


@ENGINES.register("vllm_server")
class VLLMServerEngine:
    """Rollouts from a vLLM OpenAI-compatible server (Kwon et al. 2023, arXiv 2309.06180); see the module docstring."""

    def __init__(
        self,
        ctx: EngineContext,
        *,
        url: str | None = None,
        sync: Literal["auto", "reload", "restart"] = "auto",
        weights_dir: str | None = None,
        chunk_mb: float = 256.0,
        concurrency: int = 16,
        request_timeout_s: float = 300.0,
        startup_timeout_s: float = 600.0,
        max_model_len: int | None = None,
        kv_cache_memory_bytes: int | None = None,
        server_args: list[str] | None = None,
    ) -> None:
        if url is None:
            import_vllm("vllm_server")  # the server is this Python's vLLM: fail first, with the install hint
        if sync not in ("auto", "reload", "restart"):
            raise ConfigError(f"vllm_server engine: sync must be auto, reload or restart, got {sync!r}")
        if sync == "restart" and url is not None:
            raise ConfigError("vllm_server engine: sync=restart needs a server rlfold starts (leave url unset)")
        if concurrency < 1:
            raise ConfigError(f"vllm_server engine: concurrency must be >= 1, got {concurrency}")
        self.tokenizer = ctx.tokenizer
        self.pad_id = pad_id_of(ctx.tokenizer, "vllm_server engine")
        self.shares_weights = False
        self.model_path = str(resolve_model_path(ctx.model_path))
        self.concurrency, self.request_timeout_s, self.startup_timeout_s = concurrency, request_timeout_s, startup_timeout_s
        self._tmp = tempfile.mkdtemp(prefix="rlfold-vllm-server-")
        weakref.finalize(self, shutil.rmtree, self._tmp, True)
        self.weights_dir = weights_dir or os.path.join(self._tmp, "weights")
        self.weights = WeightSync(specs_of(ctx.policy_weights().named_weights(), ctx.dtype),
                                  chunk_bytes=int(chunk_mb * (1 << 20)), engine="vllm_server engine")
        self._writer = CheckpointWriter(self.model_path, self.weights_dir)
        self.server: _Server | None = None
        if url is None:
            from vllm.platforms import current_platform

            on_cpu = bool(current_platform.is_cpu())
            args = ["--dtype", dtype_name(ctx.dtype),
                    "--max-model-len", str(max_model_len or getattr(ctx.model.config, "max_position_embeddings"))]
            if on_cpu or kv_cache_memory_bytes is not None:
                args += ["--kv-cache-memory-bytes", str(kv_cache_memory_bytes or (256 << 20))]
            if on_cpu:
                args += ["--enforce-eager"]
            self._server_args = args + list(server_args or [])
            self.server = _Server(self.model_path, self.model_path, self._server_args, self._tmp, startup_timeout_s)
            self.url = self.server.url
            self.model_name = "policy"
            self.sync_mode = ("restart" if on_cpu else "reload") if sync == "auto" else sync
        else:
            self.url = url.rstrip("/")
            self.model_name = self._served_model()
            self.sync_mode = "reload" if sync == "auto" else sync
        self.last_sync_s = 0.0

    # ------------------------------------------------------------------- HTTP
    def _post(self, path: str, body: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        data = json.dumps(body or {}).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.request_timeout_s) as r:
                text = r.read().decode()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:500]
            raise DataError(f"vllm_server engine: POST {self.url}{path} failed with HTTP {e.code}: {detail}") from e
        except (urllib.error.URLError, OSError) as e:
            raise ConfigError(f"vllm_server engine: cannot reach the vLLM server at {self.url} ({e})") from e
        return json.loads(text) if text.strip() else None

    def _served_model(self) -> str:
        try:
            with urllib.request.urlopen(self.url + "/v1/models", timeout=self.request_timeout_s) as r:
                models = json.loads(r.read().decode())["data"]
        except (urllib.error.URLError, OSError, KeyError, ValueError) as e:
            raise ConfigError(f"vllm_server engine: no vLLM server answers at {self.url}/v1/models ({e})") from e
        if not models:
            raise ConfigError(f"vllm_server engine: the server at {self.url} serves no model")
        return str(models[0]["id"])

    # ------------------------------------------------------------ weights, memory
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], streamed: bool = False) -> None:
        """Write the new weights to ``weights_dir`` and have the server take them (reload or restart)."""
        t0 = time.perf_counter()
        path = self._writer.write(self.weights.chunks(named_tensors))
        if self.sync_mode == "restart":
            assert self.server is not None
            self.server.stop()
            self.server = _Server(path, self.model_path, self._server_args, self._tmp, self.startup_timeout_s)
            self.url = self.server.url
        else:
            self._post("/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": path}})
            self._post("/reset_prefix_cache")
        self.last_sync_s = time.perf_counter() - t0

    @property
    def version(self) -> int:
        """How many weight updates the server has taken."""
        return self.weights.version

    def sleep(self) -> None:
        """Nothing: a server keeps its memory (its own ``/sleep`` is the user's to call)."""

    def wake(self) -> None:
        """Nothing (see ``sleep``)."""

    def close(self) -> None:
        """Stop the server if rlfold started it."""
        if self.server is not None:
            self.server.stop()

    # --------------------------------------------------------------- generation
    def _complete(self, ids: list[int], kwargs: dict[str, Any]) -> dict[str, Any]:
        body = {"model": self.model_name, "prompt": ids, "return_token_ids": True, "echo": False, **kwargs}
        body.pop("detokenize", None)
        body.pop("n", None)
        out = self._post("/v1/completions", body)
        try:
            return out["choices"][0]
        except (KeyError, IndexError, TypeError) as e:
            raise DataError(f"vllm_server engine: the server's completion has no choice: {str(out)[:300]}") from e

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams, seed: int):
        """``params.n`` responses per request, rows ``[r0 s0, r0 s1, ..., r1 s0, ...]``."""
        if not requests:
            raise DataError("vllm_server engine: got an empty list of requests")
        jobs: list[tuple[list[int], dict[str, Any]]] = []
        for i, req in enumerate(requests):
            ids = encode_request(self.tokenizer, req, i, engine="vllm_server engine")
            limit = min(req.max_new_tokens or params.max_new_tokens, params.max_new_tokens)
            for _ in range(params.n):
                jobs.append((ids, sampling_kwargs(params, max_tokens=limit, seed=row_seed(seed, len(jobs)))))
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(jobs))) as pool:
            choices = list(pool.map(lambda job: self._complete(*job), jobs))
        rows = []
        for (ids, _), c in zip(jobs, choices):
            tokens = c.get("token_ids")
            if tokens is None:
                raise DataError("vllm_server engine: the server returned no token_ids (vLLM >= 0.10.2 answers "
                                "return_token_ids)")
            lps = (c.get("logprobs") or {}).get("token_logprobs") or []
            if len(lps) != len(tokens) or any(x is None for x in lps):
                raise DataError(f"vllm_server engine: the server returned {len(lps)} log-probs for {len(tokens)} "
                                "tokens")
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            rows.append(row_output(ids, tokens, lps, c.get("finish_reason"), params, text))
        return batch_from_rows(rows, self.pad_id, engine="vllm_server engine")


__all__ = ["VLLMServerEngine"]
