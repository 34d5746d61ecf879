"""A CPU stand-in for the vLLM server TRL's VLLMClient and mtgrpo's feedback clients talk to, and the client-side stub
that carries weights to it over TCP instead of NCCL.

    python tests/vllm_standin.py --model DIR --port-file PORT_FILE --record RECORD.jsonl [--served-model-name NAME]

What it serves: the routes and JSON shapes of `vllm serve` in development mode as TRL 1.16 starts it
(`VLLM_SERVER_DEV_MODE=1 --weight-transfer-config '{"backend": "nccl"}' --logprobs-mode processed_logprobs`):
`/health`, `/v1/models`, `/get_world_size`, `/server_info`, `/v1/completions` (token-id prompts, `n`, sampling
parameters, `stop_token_ids`, `stop` strings with `include_stop_str_in_output`, `logprobs`, `return_token_ids`,
`return_tokens_as_token_ids`; choices prompt-major), `/v1/chat/completions` (the chat template of the served model,
one conversation per request, the same stop parameters) and the weight-transfer routes `/init_weight_transfer_engine`,
`/start_weight_update`, `/update_weights`, `/finish_weight_update`, `/reset_prefix_cache`. With `--no-dev-mode` it serves as `vllm serve` does
without `VLLM_SERVER_DEV_MODE=1`: `/server_info`, `/get_world_size`, the weight-transfer routes and
`/reset_prefix_cache` answer 404.

How it generates: with transformers on CPU, from the same checkpoint the trainer starts from, one sequence at a time
with a KV cache, so the logprobs it returns are real (processed: after temperature, top-k, top-p and min-p, as
`--logprobs-mode processed_logprobs`). It stops where vLLM stops: the request's `stop_token_ids`, the model's EOS ids
(tokenizer and generation config, as vLLM's default sampling parameters), `stop` strings; the stop token stays in
`token_ids`. `--script` replaces sampling by a scripted reply that starts with a fingerprint of its prompt (see
`scripted_reply`), scored by the model for its logprobs.

Weights: where vLLM's workers join an NCCL group with the trainer, this server connects a TCP socket to the trainer's
`master_address:master_port` on `/init_weight_transfer_engine`, and `/update_weights` reads the announced tensors
(names, dtypes, shapes) from it and loads them into the model; a name the model does not have is refused (HTTP 400)
as vLLM's weight loader refuses it. On the trainer's side `install_tcp_weight_transfer()` replaces only what needs
CUDA in TRL's client: `init_communicator` (its CUDA device check and NCCL rendezvous) and the NCCL broadcast; every
HTTP call, payload and ordering is TRL's own code.

Every request is appended to the `--record` file as one JSON line (route, body, and what was answered), which the tests
read. `VLLM_STANDIN_SABOTAGE` breaks the server on purpose, to show that the tests catch it (never set in CI):
`swap` hands each prompt's completions to the next prompt, `stale` reads pushed weights but keeps the old ones,
`ignore_stop` ignores `stop_token_ids`.
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlparse

# ---- the wire format of one tensor over the TCP "group" --------------------------------------------------------------


def _send_tensor(sock: socket.socket, name: str, tensor) -> None:
    import torch

    data = tensor.detach().contiguous().cpu()
    dtype = str(data.dtype).removeprefix("torch.")
    raw = data.view(torch.uint8).numpy().tobytes() if data.numel() else b""
    header = json.dumps(
        {"name": name, "dtype": dtype, "shape": list(data.shape), "nbytes": len(raw)}
    ).encode()
    sock.sendall(struct.pack("!I", len(header)) + header + raw)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("the trainer closed the weight-transfer socket mid-tensor")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _recv_tensor(sock: socket.socket):
    import torch

    (size,) = struct.unpack("!I", _recv_exact(sock, 4))
    header = json.loads(_recv_exact(sock, size))
    raw = bytearray(_recv_exact(sock, header["nbytes"]))
    dtype = getattr(torch, header["dtype"])
    tensor = (
        torch.frombuffer(raw, dtype=torch.uint8).view(dtype).reshape(header["shape"])
        if raw
        else torch.empty(header["shape"], dtype=dtype)
    )
    return header, tensor


# ---- trainer side: the stub for TRL's CUDA-bound communicator ----------------------------------------------------------


class TcpWeightTransfer:
    """Takes the place of vLLM's `NCCLWeightTransferEngine` in TRL's client (the pre-0.28 static API it calls)."""

    @staticmethod
    def trainer_init(init_info: dict):
        listener = socket.create_server((init_info["master_address"], init_info["master_port"]))
        listener.settimeout(120)
        conn, _ = listener.accept()
        listener.close()
        conn.settimeout(None)
        return SimpleNamespace(group=SimpleNamespace(store=None, socket=conn), conn=conn)

    @staticmethod
    def trainer_send_weights(iterator, trainer_args) -> None:
        conn = trainer_args.group.conn
        for name, tensor in iterator:
            _send_tensor(conn, name, tensor)


@dataclass
class TcpSendWeightsArgs:
    group: object
    packed: bool = True


def _tcp_init_communicator(self, device=0):
    """TRL's `VLLMClient.init_communicator` without its CUDA device check: same server checks, same request, same
    concurrency (the server joins while the trainer listens), TCP where NCCL would be."""
    if self.get_server_info()["weight_transfer_config"] is None:
        raise RuntimeError(f"The vLLM server at {self.base_url} has no weight-transfer engine.")
    init_info = {
        "master_address": "127.0.0.1",
        "master_port": self.group_port,
        "rank_offset": 1,
        "world_size": self.get_world_size() + 1,
    }
    with ThreadPoolExecutor(max_workers=1) as executor:
        future = executor.submit(
            self._post, f"{self.base_url}/init_weight_transfer_engine", json={"init_info": init_info}
        )
        self.communicator = TcpWeightTransfer.trainer_init(init_info)
        future.result()
    atexit.register(self.close_communicator)


def install_tcp_weight_transfer(monkeypatch=None) -> None:
    """Let TRL's VLLMClient run without vLLM and CUDA: it believes vLLM is installed, and its NCCL pieces send over
    TCP. Generation, the weight-update requests and their order stay TRL's code. With pytest's `monkeypatch`, undone
    after the test."""
    import trl.generation.vllm_client as client
    import trl.generation.vllm_generation as generation

    def put(owner, name, value):
        if monkeypatch is None:
            setattr(owner, name, value)
        else:
            monkeypatch.setattr(owner, name, value, raising=False)

    def available(min_version=None):
        return True

    put(client, "is_vllm_available", available)
    put(generation, "is_vllm_available", available)
    put(
        client, "_HAS_STATEFUL_TRAINER_ENGINE", False
    )  # the static NCCLWeightTransferEngine API, stubbed below
    put(client, "NCCLWeightTransferEngine", TcpWeightTransfer)
    put(client, "NCCLTrainerSendWeightsArgs", TcpSendWeightsArgs)
    put(client.VLLMClient, "init_communicator", _tcp_init_communicator)


# ---- the server -------------------------------------------------------------------------------------------------------

# The routes vLLM registers only in development mode (`VLLM_SERVER_DEV_MODE=1`), which TRL's weight sync needs.
DEV_MODE_ROUTES = {
    "/server_info",
    "/get_world_size",
    "/init_weight_transfer_engine",
    "/start_weight_update",
    "/update_weights",
    "/finish_weight_update",
    "/reset_prefix_cache",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fingerprint(ids) -> str:
    return f"ctx{zlib.crc32(json.dumps([int(i) for i in ids]).encode())}"


class Engine:
    def __init__(self, model_dir: str, served_name: str, script: dict | None, sabotage: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(1)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.served_name, self.script, self.sabotage = served_name, script, sabotage
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = sorted({i for i in [*eos, self.tokenizer.eos_token_id] if i is not None})
        self.generator = torch.Generator().manual_seed(0)
        self.lock = threading.Lock()
        self.conn: socket.socket | None = None
        self.params = dict(self.model.named_parameters())
        self.accepted = set(self.params) | set(self.model.state_dict())
        self.pushes = 0

    # -- sampling --

    def _process(self, logits, params: dict):
        torch = self.torch
        temperature = params.get("temperature", 1.0)
        if temperature is None or temperature <= 1e-5:
            return torch.log_softmax(logits, -1), True
        logits = logits / temperature
        top_k = params.get("top_k") or 0
        if top_k and top_k > 0:
            kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, -math.inf)
        top_p = params.get("top_p", 1.0)
        if top_p is not None and top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True)
            cumulative = torch.softmax(sorted_logits, -1).cumsum(-1)
            drop = cumulative - torch.softmax(sorted_logits, -1) > top_p
            logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), -math.inf)
        min_p = params.get("min_p") or 0.0
        if min_p > 0:
            probs = torch.softmax(logits, -1)
            logits = logits.masked_fill(probs < min_p * probs.max(), -math.inf)
        return torch.log_softmax(logits, -1), False

    def _stops(self, params: dict) -> tuple[set[int], list[str]]:
        ids = set() if params.get("ignore_eos") else set(self.eos_ids)
        if self.sabotage != "ignore_stop":
            ids |= set(params.get("stop_token_ids") or [])
        stop = params.get("stop") or []
        return ids, [stop] if isinstance(stop, str) else list(stop)

    def _stop_string_hit(self, ids: list[int], strings: list[str]) -> bool:
        if not strings:
            return False
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        return any(s in text for s in strings)

    def _forward(self, ids, past):
        out = self.model(input_ids=self.torch.tensor([ids]), past_key_values=past, use_cache=True)
        return out.logits[0, -1].float(), out.past_key_values

    def sample(self, prompt: list[int], params: dict, sample_index: int) -> dict:
        """One completion: {token_ids, logprobs (of each token), finish_reason}."""
        if self.script is not None:
            return self._scripted(prompt, params, sample_index)
        torch = self.torch
        max_tokens = params.get("max_tokens") or 16
        stop_ids, stop_strings = self._stops(params)
        penalty = params.get("repetition_penalty") or 1.0
        out, logps, finish = [], [], "length"
        with torch.no_grad():
            logits, past = self._forward(prompt, None)
            while len(out) < max_tokens:
                if penalty != 1.0:
                    seen = torch.tensor(sorted(set(prompt + out)))
                    picked = logits[seen]
                    logits = logits.clone()
                    logits[seen] = torch.where(picked > 0, picked / penalty, picked * penalty)
                logprobs, greedy = self._process(logits, params)
                if greedy:
                    token = int(torch.argmax(logprobs))
                else:
                    token = int(torch.multinomial(logprobs.exp(), 1, generator=self.generator))
                out.append(token)
                logps.append(float(logprobs[token]))
                if token in stop_ids:
                    finish = "stop"
                    break
                if self._stop_string_hit(out, stop_strings):
                    finish = "stop"
                    break
                logits, past = self._forward([token], past)
        return {"token_ids": out, "logprobs": logps, "finish_reason": finish}

    def _scripted(self, prompt: list[int], params: dict, sample_index: int) -> dict:
        """The scripted reply: `ctx<crc of the prompt ids> s<j> <body>`, where j is the sample drawn on the episode's
        first turn (read back from the context on later turns) and the body is `--script`'s "continue" text until the
        episode's turn number reaches `(crc(first prompt) + j) % turns + 1`, then its "final" text; ended by the
        first stop id (the model's EOS) unless a stop string ends it first. Logprobs: the model's, teacher-forced."""
        tokenizer = self.tokenizer
        text = tokenizer.decode(prompt, skip_special_tokens=False)
        header = self.script["header"]
        first_prompt = text.split(header)[0]
        turn = text.count(header)
        earlier = re.search(r"ctx\d+ s(\d+)", text)
        j = int(earlier.group(1)) if earlier else sample_index
        ends_at = (zlib.crc32(first_prompt.encode()) + j) % self.script["turns"] + 1
        body = self.script["final"] if turn >= ends_at else self.script["continue"]
        ids = tokenizer(f"{fingerprint(prompt)} s{j} {body}", add_special_tokens=False)["input_ids"]
        stop_ids, stop_strings = self._stops(params)
        finish = "length"
        for k in range(1, len(ids) + 1):
            if self._stop_string_hit(ids[:k], stop_strings):
                ids, finish = ids[:k], "stop"
                break
        else:
            ids = ids + [min(stop_ids)] if stop_ids else ids
            finish = "stop"
        max_tokens = params.get("max_tokens") or 16
        if len(ids) > max_tokens:
            ids, finish = ids[:max_tokens], "length"
        with self.torch.no_grad():
            logits = (
                self.model(input_ids=self.torch.tensor([prompt + ids]))
                .logits[0, len(prompt) - 1 : -1]
                .float()
            )
        logps = [float(self._process(row, params)[0][tok]) for row, tok in zip(logits, ids, strict=True)]
        return {"token_ids": ids, "logprobs": logps, "finish_reason": finish}

    # -- weights --

    def connect(self, init_info: dict) -> None:
        deadline = time.time() + 60
        while True:
            try:
                self.conn = socket.create_connection((init_info["master_address"], init_info["master_port"]))
                return
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)

    def receive(self, update_info: dict) -> dict:
        """Read every announced tensor (all of them, even a refused one, so the trainer's sender never blocks), then
        load them unless one is refused."""
        names, dtypes, shapes = update_info["names"], update_info["dtype_names"], update_info["shapes"]
        received = []
        for name, dtype, shape in zip(names, dtypes, shapes, strict=True):
            header, tensor = _recv_tensor(self.conn)
            if header["name"] != name or header["dtype"] != dtype or header["shape"] != list(shape):
                return {"error": f"announced {name} {dtype} {shape}, received {header}"}
            received.append((name, tensor))
        unknown = [n for n, _ in received if n not in self.accepted]
        if unknown:
            return {
                "error": f"the model has no parameter named {unknown[0]!r} ({len(unknown)} unknown names)"
            }
        state = self.model.state_dict()
        sums = {}
        for name, tensor in received:
            sums[name] = float(tensor.double().sum())
            if self.sabotage != "stale":
                with self.torch.no_grad():
                    state[name].copy_(tensor.to(state[name].dtype))
        self.pushes += 1
        return {"sums": sums}


def _choice_logprobs_completions(ids: list[int], logps: list[float]) -> dict:
    return {
        "tokens": [f"token_id:{t}" for t in ids],
        "token_logprobs": logps,
        "top_logprobs": [{f"token_id:{t}": lp} for t, lp in zip(ids, logps, strict=True)],
        "text_offset": [0] * len(ids),
    }


def serve(engine: Engine, port_file: str, record: str, dev_mode: bool = True) -> None:
    record_lock = threading.Lock()
    counter = {"n": 0}

    def log(entry: dict) -> None:
        with record_lock:
            counter["n"] += 1
            with open(record, "a") as f:
                f.write(json.dumps({"seq": counter["n"], "time": time.time(), **entry}) + "\n")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _send(self, code: int, payload) -> None:
            body = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> dict:
            size = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(size) or b"{}") if size else {}

        def _unregistered(self, path: str) -> bool:
            return path in DEV_MODE_ROUTES and not dev_mode

        def do_GET(self):
            path = urlparse(self.path).path
            log({"route": path, "method": "GET"})
            if self._unregistered(path):
                return self._send(404, {"detail": "Not Found"})
            if path == "/health":
                return self._send(200, {})
            if path == "/v1/models":
                return self._send(
                    200, {"object": "list", "data": [{"id": engine.served_name, "object": "model"}]}
                )
            if path == "/get_world_size":
                return self._send(200, {"world_size": 1})
            if path == "/server_info":
                config = {
                    "weight_transfer_config": {"backend": "nccl"},
                    "model_config": {"logprobs_mode": "processed_logprobs", "model": engine.served_name},
                }
                return self._send(200, {"vllm_config": config})
            return self._send(404, {"error": f"no route {path}"})

        def do_POST(self):
            path = urlparse(self.path).path
            body = self._body()
            try:
                handler = None if self._unregistered(path) else ROUTES.get(path)
                if handler is None:
                    log({"route": path, "body": body, "status": 404})
                    return self._send(404, {"error": f"no route {path}"})
                code, payload, extra = handler(body)
            except Exception as error:  # noqa: BLE001 — answered like a server error, and recorded
                log({"route": path, "body": body, "status": 500, "error": repr(error)})
                return self._send(500, {"error": repr(error)})
            log({"route": path, "body": body, "status": code, **extra})
            return self._send(code, payload)

    def check_model(body: dict):
        if body.get("model") not in (None, engine.served_name):
            return 404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}}, {}
        return None

    def completions(body: dict):
        refused = check_model(body)
        if refused:
            return refused
        prompts = body["prompt"]
        if prompts and isinstance(prompts[0], int):
            prompts = [prompts]
        prompts = [p if isinstance(p, list) else engine.tokenizer(p)["input_ids"] for p in prompts]
        n = body.get("n", 1)
        with engine.lock:
            generated = [[engine.sample(p, body, j) for j in range(n)] for p in prompts]
        # The record keeps what was generated for each prompt; the sabotage hands it to the next prompt.
        outputs = generated[1:] + generated[:1] if engine.sabotage == "swap" else generated
        choices = []
        for k, (prompt, samples) in enumerate(zip(prompts, outputs, strict=True)):
            for j, s in enumerate(samples):
                choice = {
                    "index": k * n + j,
                    "text": engine.tokenizer.decode(s["token_ids"], skip_special_tokens=True),
                    "finish_reason": s["finish_reason"],
                    "logprobs": None
                    if body.get("logprobs") is None
                    else _choice_logprobs_completions(s["token_ids"], s["logprobs"]),
                }
                if body.get("return_token_ids"):
                    choice["token_ids"], choice["prompt_token_ids"] = s["token_ids"], prompt
                choices.append(choice)
        answered = [
            {
                "prompt": p,
                "completions": [s["token_ids"] for s in ss],
                "logprobs": [s["logprobs"] for s in ss],
            }
            for p, ss in zip(prompts, generated, strict=True)
        ]
        return (
            200,
            {"object": "text_completion", "model": engine.served_name, "choices": choices},
            {"answered": answered},
        )

    def chat(body: dict):
        refused = check_model(body)
        if refused:
            return refused
        prompt = list(
            engine.tokenizer.apply_chat_template(
                body["messages"], add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )
        with engine.lock:
            samples = [engine.sample(prompt, body, j) for j in range(body.get("n", 1))]
        choices = []
        for j, s in enumerate(samples):
            choice = {
                "index": j,
                "message": {
                    "role": "assistant",
                    "content": engine.tokenizer.decode(s["token_ids"], skip_special_tokens=True),
                },
                "finish_reason": s["finish_reason"],
                "logprobs": {
                    "content": [
                        {"token": f"token_id:{t}", "logprob": lp, "top_logprobs": []}
                        for t, lp in zip(s["token_ids"], s["logprobs"], strict=True)
                    ]
                }
                if body.get("logprobs")
                else None,
            }
            if body.get("return_token_ids"):
                choice["token_ids"] = s["token_ids"]
            choices.append(choice)
        payload = {"object": "chat.completion", "model": engine.served_name, "choices": choices}
        if body.get("return_token_ids"):
            payload["prompt_token_ids"] = prompt
        answered = {
            "prompt": prompt,
            "completions": [s["token_ids"] for s in samples],
            "texts": [c["message"]["content"] for c in choices],
        }
        return 200, payload, {"answered": answered}

    def init_engine(body: dict):
        engine.connect(body["init_info"])
        return 200, {}, {}

    def update(body: dict):
        with engine.lock:
            result = engine.receive(body["update_info"])
        if "error" in result:
            return 400, {"error": result["error"]}, {"refused": result["error"]}
        return 200, {}, {"names": body["update_info"]["names"], "sums": result["sums"]}

    def ok(body: dict):
        return 200, {}, {}

    ROUTES = {
        "/v1/completions": completions,
        "/v1/chat/completions": chat,
        "/init_weight_transfer_engine": init_engine,
        "/start_weight_update": ok,
        "/update_weights": update,
        "/finish_weight_update": ok,
        "/reset_prefix_cache": lambda body: (200, {"success": True}, {}),
    }

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    Path(port_file + ".tmp").write_text(str(httpd.server_address[1]))
    os.replace(port_file + ".tmp", port_file)
    httpd.serve_forever()


# ---- the tests' handle on a running stand-in ------------------------------------------------------------------------


class StandIn:
    """A stand-in server process: `url`, `requests(route=None)` (the record), `stop()`."""

    def __init__(
        self, model_dir, workdir, name="standin", served_model_name=None, script=None, env=None, dev_mode=True
    ):
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self.record = workdir / f"{name}.jsonl"
        self.record.write_text("")
        port_file = workdir / f"{name}.port"
        port_file.unlink(missing_ok=True)
        cmd = [
            sys.executable,
            __file__,
            "--model",
            str(model_dir),
            "--port-file",
            str(port_file),
            "--record",
            str(self.record),
        ]
        if served_model_name:
            cmd += ["--served-model-name", served_model_name]
        if script:
            cmd += ["--script", json.dumps(script)]
        if not dev_mode:
            cmd += ["--no-dev-mode"]
        self.log = open(workdir / f"{name}.log", "w")  # noqa: SIM115 — closed in stop()
        self.process = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        deadline = time.time() + 120
        while not port_file.exists():
            if self.process.poll() is not None or time.time() > deadline:
                raise RuntimeError(
                    f"stand-in {name} did not start: {(workdir / f'{name}.log').read_text()[-2000:]}"
                )
            time.sleep(0.1)
        self.port = int(port_file.read_text())
        self.url = f"http://127.0.0.1:{self.port}"

    def requests(self, route: str | None = None) -> list[dict]:
        entries = [json.loads(line) for line in self.record.read_text().splitlines() if line.strip()]
        return [e for e in entries if route is None or e["route"] == route]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--record", required=True)
    parser.add_argument("--served-model-name", default=None)
    parser.add_argument("--script", default=None, help='JSON: {"header", "turns", "continue", "final"}')
    parser.add_argument(
        "--no-dev-mode",
        action="store_true",
        help="serve as vLLM without VLLM_SERVER_DEV_MODE=1 (no weight routes)",
    )
    args = parser.parse_args(argv)
    sabotage = os.environ.get("VLLM_STANDIN_SABOTAGE", "")
    engine = Engine(
        args.model,
        args.served_model_name or args.model,
        json.loads(args.script) if args.script else None,
        sabotage,
    )
    serve(engine, args.port_file, args.record, dev_mode=not args.no_dev_mode)


if __name__ == "__main__":
    main()
