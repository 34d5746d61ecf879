"""Node launcher: one machine's share of a run, the vLLM rollout server plus `accelerate launch` of mtgrpo.train.

    python -m mtgrpo.launcher RECIPE [--dry-run] [--field value ...]      # also: mtgrpo launch RECIPE ...
    python -m mtgrpo.launcher RECIPE --num-nodes 2 --node-rank 1 --main-address 10.0.0.1   # second node
    python -m mtgrpo.launcher RECIPE --num-nodes 3 --node-rank R --main-address 10.0.0.1 --generation-node 10.0.0.3

Unknown flags (`--learning_rate 1.0e-06`, `--vllm_tensor_parallel_size 2`, ...) are recipe overrides for
mtgrpo.train; the launcher reads the effective recipe values too, so an override changes the GPU split as well.

When the recipe says `use_vllm: true` and `vllm_mode: server`, there are two layouts:
- default: GPUs 0..k-1 of every node are reserved for vLLM (k = vllm_tensor_parallel_size, default 1) and the
  rest train. Only the main training process talks to vLLM, so only node 0 runs a server, bound to 127.0.0.1;
  accelerate/torchrun start the same number of processes on every node, so the k GPUs idle on the other nodes.
- `--generation-node ADDRESS` (TRL's dedicated vLLM node): the node with the last rank serves vLLM on all its
  GPUs (data parallel, tensor parallel k), bound to 0.0.0.0 at ADDRESS, and the other nodes train on all theirs.
Without GPUs, the launcher runs `python -m mtgrpo.train` directly.

A recipe with `feedback_source: model` and a loopback `feedback_server_url` (http://127.0.0.1:PORT) gets a second
vLLM server for the feedback model on the next GPU (single-node runs; every training process calls it): a plain
OpenAI-compatible one for a frozen model, TRL's weight-transfer kind for a trained one (`train_feedback_model`).
See docs/feedback_model.md.

A node other than the main one watches the main node's rendezvous port and stops with a clear message when it
stays unreachable for --peer-timeout seconds, instead of hanging until NCCL's 30-minute timeout. On SIGTERM or
Ctrl-C the launcher forwards the signal and gives training --stop-grace seconds to save a checkpoint
(mtgrpo.signals.SaveOnSigterm) before killing it.
Local EC2 (local_training/train.sh) and SageMaker (sagemaker_training/entrypoint.py) both call this module.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .recipe_file import read_recipe

ACCELERATE_CONFIGS = Path(__file__).resolve().parent.parent / "local_training"
DEFAULT_SERVER_TIMEOUT = 900.0  # a 7B model with CUDA-graph capture can take several minutes to come up
STOP_GRACE_SECONDS = 30.0
# SageMaker and docker stop send SIGKILL 120 s after SIGTERM; training gets most of that to save a checkpoint.
TRAIN_STOP_GRACE_SECONDS = 105.0
DEFAULT_PEER_TIMEOUT = 60.0
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Command:
    """One process to start: `argv`, plus `env`, the variables the launcher sets on top of the inherited ones."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def shell(self) -> str:
        """The command as a copy-pasteable shell line."""
        assignments = [f"{key}={shlex.quote(value)}" for key, value in self.env.items()]
        return " ".join([*assignments, shlex.join(self.argv)])


@dataclass(frozen=True)
class LaunchPlan:
    """Everything one node runs, built by `plan_launch` without side effects.

    Attributes:
        train: the training command (`accelerate launch ... -m mtgrpo.train ...`, or plain python on CPU); None
            on a dedicated generation node, which only serves vLLM.
        server: the vLLM server started on this node before training, or None.
        server_log: where the server's stdout/stderr go (None without a server on this node).
        health_url: `/health` URL that must answer 200 before training starts (this node's server or the
            generation node's), or None when no vLLM server is involved.
        peer: `host:port` of the main node's rendezvous (torchrun's TCP store), watched from the other nodes:
            training starts once it answers and stops when it goes away. None on the main node.
        world_size: training processes of the whole run (what a DeepSpeed checkpoint's shard count must equal).
        notes: human-readable decisions worth printing (GPU split, overrides the launcher added).
        feedback_server, feedback_server_log, feedback_health_url: the frozen feedback model's vLLM server
            (feedback_source: model with a loopback feedback_server_url), its log and its `/health` URL.
    """

    train: Command | None
    server: Command | None = None
    server_log: str | None = None
    health_url: str | None = None
    peer: str | None = None
    world_size: int = 1
    notes: list[str] = field(default_factory=list)
    feedback_server: Command | None = None
    feedback_server_log: str | None = None
    feedback_health_url: str | None = None


class ServerError(RuntimeError):
    """The vLLM server died or never became healthy."""


def _override(overrides: Sequence[str], key: str) -> str | None:
    """Value of `--key value` / `--key=value` in the training overrides (last one wins, like argparse)."""
    value = None
    for i, token in enumerate(overrides):
        if token == f"--{key}":
            nxt = overrides[i + 1] if i + 1 < len(overrides) else None
            # HfArgumentParser accepts a bare `--flag` for booleans.
            value = "true" if nxt is None or nxt.startswith("--") else nxt
        elif token.startswith(f"--{key}="):
            value = token.split("=", 1)[1]
    return value


def _setting(recipe: dict, overrides: Sequence[str], key: str, default=None):
    value = _override(overrides, key)
    if value is None:
        return recipe.get(key, default)
    if isinstance(default, bool) or isinstance(recipe.get(key), bool):
        return value.lower() in ("yes", "true", "t", "y", "1")
    return value


def detect_gpus() -> int:
    """GPUs this process may use: CUDA_VISIBLE_DEVICES if set, else what `nvidia-smi -L` lists, else 0."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in listing.stdout.splitlines())


def _default_accelerate_config(num_processes: int, num_nodes: int) -> Path:
    if num_nodes > 1:
        name = "zero3_multinode.yaml"
    elif num_processes == 1:
        name = "single_gpu.yaml"
    else:
        name = "zero3.yaml"
    return ACCELERATE_CONFIGS / name


def _vllm_serve_command(
    recipe_path: str,
    recipe: dict,
    overrides,
    port: int,
    tensor_parallel: int,
    host: str = LOOPBACK,
    data_parallel: int = 1,
    model_key: str = "model_name_or_path",
) -> list[str]:
    # TRL builds the exact `vllm serve` line its server mode needs (dev-mode weight transfer, processed logprobs,
    # uncapped logprobs, scale-out routes on vLLM >= 0.30); reuse it instead of copying the flag list.
    from trl.scripts.vllm_serve import ScriptArguments, build_command

    model = _setting(recipe, overrides, model_key)
    if not model:
        raise ValueError(f"Recipe {recipe_path} has no {model_key} for the vLLM server to load.")
    max_len = _setting(recipe, overrides, "vllm_max_model_length")
    # GRPOConfig's 0.3 default is meant for colocate mode; a dedicated server GPU takes TRL serve's 0.9 unless
    # the recipe asks otherwise.
    memory = _setting(recipe, overrides, "vllm_gpu_memory_utilization", 0.9)
    args = ScriptArguments(
        model=str(model),
        # The same weights training starts from: a pinned revision must reach vLLM too.
        revision=_setting(recipe, overrides, "model_revision") if model_key == "model_name_or_path" else None,
        host=host,
        port=port,
        tensor_parallel_size=tensor_parallel,
        data_parallel_size=data_parallel,
        gpu_memory_utilization=float(memory),
        max_model_len=int(max_len) if max_len is not None else None,
    )
    return build_command(args)


def plan_launch(
    recipe_path: str | Path,
    *,
    num_gpus: int,
    num_nodes: int = 1,
    node_rank: int = 0,
    main_address: str | None = None,
    main_port: int = 29500,
    accelerate_config: str | Path | None = None,
    train_overrides: Sequence[str] = (),
    visible_devices: str | None = None,
    log_dir: str | Path | None = None,
    generation_node: str | None = None,
    python: str = sys.executable,
) -> LaunchPlan:
    """Decide what this node runs. Pure: reads the recipe, starts nothing.

    Args:
        recipe_path: the recipe YAML passed to `mtgrpo.train --config`.
        num_gpus: GPUs on this node (0 = CPU-only: plain `python -m mtgrpo.train`, no vLLM).
        num_nodes, node_rank, main_address, main_port: multi-node coordinates (accelerate's machine rank and
            the rendezvous address of the main training node, rank 0).
        accelerate_config: accelerate YAML; default local_training/{single_gpu,zero3,zero3_multinode}.yaml.
        train_overrides: extra `--field value` flags for mtgrpo.train (also read for vLLM settings).
        visible_devices: the node's CUDA_VISIBLE_DEVICES, so the split maps onto the GPUs actually granted.
        log_dir: directory for the vLLM server log (default `<output_dir>/logs`).
        generation_node: address of a dedicated vLLM node, the one with the last rank (None: the default
            layout, a server on node 0's first GPUs).
        python: interpreter for every command.
    """
    recipe_path = str(recipe_path)
    recipe = read_recipe(recipe_path)
    overrides = list(train_overrides)
    if num_nodes < 1 or not 0 <= node_rank < num_nodes:
        raise ValueError(
            f"Node rank {node_rank} is not in [0, {num_nodes}). Pass --node-rank from 0 to --num-nodes - 1."
        )
    if num_nodes > 1 and not main_address:
        raise ValueError("Multi-node runs need --main-address: the IP or hostname of the node with rank 0.")
    train_module = ["-m", "mtgrpo.train", "--config", recipe_path]
    if num_gpus == 0:
        return _cpu_plan(recipe, overrides, num_nodes, [python, *train_module])

    gpu_ids = (
        [d.strip() for d in visible_devices.split(",")]
        if visible_devices
        else [str(i) for i in range(num_gpus)]
    )
    if len(gpu_ids) < num_gpus:
        raise ValueError(
            f"--num-gpus {num_gpus} but CUDA_VISIBLE_DEVICES lists only {len(gpu_ids)}: {visible_devices}."
        )
    gpu_ids = gpu_ids[:num_gpus]
    notes: list[str] = []
    server_mode = bool(_setting(recipe, overrides, "use_vllm", False)) and (
        _setting(recipe, overrides, "vllm_mode", "colocate") == "server"
    )
    if server_mode and (external := _setting(recipe, overrides, "vllm_server_base_url")):
        notes.append(f"vllm_server_base_url={external}: using that server, starting none")
        server_mode = False
    if generation_node and not (server_mode and num_nodes >= 2):
        raise ValueError(
            "--generation-node needs --num-nodes >= 2 and a recipe with `use_vllm: true` and `vllm_mode: server` "
            "(the last node serves vLLM, the others train). Drop --generation-node, or add nodes."
        )
    train_nodes = num_nodes - 1 if generation_node else num_nodes
    train_rank = node_rank
    port = int(_setting(recipe, overrides, "vllm_server_port", 8000))
    tensor_parallel = int(_setting(recipe, overrides, "vllm_tensor_parallel_size", 1))
    output_dir = _setting(recipe, overrides, "output_dir", "trainer_output")
    log_path = str(Path(log_dir or Path(output_dir) / "logs") / "vllm-server.log")
    # The rendezvous store of the main training node: the other nodes wait for it, then watch it.
    peer = f"{main_address}:{main_port}" if num_nodes > 1 and node_rank > 0 else None

    server = server_log = health_url = None
    vllm_gpus = 0
    host_flags: list[str] = []
    if generation_node:
        url = f"http://{generation_node}:{port}/health"
        if node_rank == num_nodes - 1:
            if num_gpus % tensor_parallel:
                raise ValueError(
                    f"The generation node has {num_gpus} GPUs, not a multiple of vllm_tensor_parallel_size="
                    f"{tensor_parallel}. Pick a tensor parallel size that divides the GPU count."
                )
            data_parallel = num_gpus // tensor_parallel
            notes.append(
                f"generation node: vLLM on GPUs {gpu_ids} (data parallel {data_parallel} x tensor parallel "
                f"{tensor_parallel}), bound to 0.0.0.0:{port} for the training nodes; open ports {port} and "
                "51216 (weight sync) to them only, the weight-update routes have no authentication"
            )
            server = Command(
                _vllm_serve_command(
                    recipe_path, recipe, overrides, port, tensor_parallel, "0.0.0.0", data_parallel
                ),
                {"CUDA_VISIBLE_DEVICES": ",".join(gpu_ids), "VLLM_SERVER_DEV_MODE": "1"},
            )
            return LaunchPlan(
                train=None,
                server=server,
                server_log=log_path,
                health_url=f"http://{LOOPBACK}:{port}/health",
                peer=f"{main_address}:{main_port}",
                world_size=0,
                notes=notes,
            )
        health_url = url
        host_flags = ["--vllm_server_host", generation_node, "--vllm_server_port", str(port)]
        notes.append(f"training on all GPUs {gpu_ids}; vLLM runs on the generation node {generation_node}")
    elif server_mode:
        vllm_gpus = tensor_parallel
        if vllm_gpus >= num_gpus:
            raise ValueError(
                f"The vLLM server needs {vllm_gpus} GPU(s) (vllm_tensor_parallel_size) and training at least 1, but "
                f"this node has {num_gpus}. Lower vllm_tensor_parallel_size, or set `vllm_mode: colocate` "
                "(--vllm_mode colocate) to share the GPUs between generation and training."
            )
        # Only the main training process (global rank 0, on node 0) talks to the server, so it listens on
        # loopback: its dev-mode weight-update routes stay unreachable from the network.
        host_flags = ["--vllm_server_host", LOOPBACK, "--vllm_server_port", str(port)]
        notes.append(f"GPU split: {gpu_ids[:vllm_gpus]} vLLM, {gpu_ids[vllm_gpus:]} training")
        if node_rank == 0:
            health_url = f"http://{LOOPBACK}:{port}/health"
            server_log = log_path
            server = Command(
                _vllm_serve_command(recipe_path, recipe, overrides, port, vllm_gpus),
                {"CUDA_VISIBLE_DEVICES": ",".join(gpu_ids[:vllm_gpus]), "VLLM_SERVER_DEV_MODE": "1"},
            )
        else:
            notes.append(
                f"vLLM runs on the main node {main_address} (loopback only); GPUs {gpu_ids[:vllm_gpus]} stay idle "
                "here. --generation-node puts vLLM on a node of its own and every other GPU to training"
            )

    feedback = _feedback_server(
        recipe_path, recipe, overrides, num_nodes, gpu_ids[vllm_gpus:], log_path, notes, python
    )
    if feedback is not None:
        vllm_gpus += 1  # the feedback server's GPU comes right after the rollout server's
        notes[:] = [n for n in notes if not n.startswith("GPU split:")]
        notes.insert(0, f"GPU split: {gpu_ids[: vllm_gpus - 1]} vLLM (rollouts), {gpu_ids[vllm_gpus - 1 : vllm_gpus]} vLLM "
                     f"(feedback model), {gpu_ids[vllm_gpus:]} training")
        if vllm_gpus >= num_gpus:
            raise ValueError(
                f"The rollout vLLM server, the feedback model's server and training need at least {vllm_gpus + 1} "
                f"GPUs, this node has {num_gpus}. Point feedback_server_url at a server on another machine, or drop "
                "it to run the feedback model in the training process (feedback_device)."
            )
    per_node = num_gpus - vllm_gpus
    total = per_node * train_nodes
    config = Path(accelerate_config) if accelerate_config else _default_accelerate_config(total, train_nodes)
    if not config.is_file():
        raise FileNotFoundError(
            f"Accelerate config {config} not found. Pass --accelerate-config PATH (see local_training/)."
        )
    accelerate = [python, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    accelerate += [
        "--num_processes",
        str(total),
        "--num_machines",
        str(train_nodes),
        "--machine_rank",
        str(train_rank),
    ]
    if num_nodes > 1:
        accelerate += ["--main_process_ip", main_address, "--main_process_port", str(main_port)]
    if train_nodes > 1 and _is_deepspeed(config):
        # accelerate's default multi-node DeepSpeed launcher (pdsh) writes the whole environment, tokens
        # included, to ./.deepspeed_env for its SSH fan-out; the standard launcher (torchrun per node) writes none.
        accelerate += ["--deepspeed_multinode_launcher", "standard"]
    if peer:
        notes.append(f"waits for the main node's rendezvous {peer}, then stops if it goes away")
    train = Command(
        [*accelerate, *train_module, *host_flags, *overrides],
        {
            "CUDA_VISIBLE_DEVICES": ",".join(gpu_ids[vllm_gpus:]),
            # torchrun gives workers this long between forwarding SIGTERM and SIGKILL (default 30 s): long enough
            # for SaveOnSigterm to finish the step and save, short enough to end before the launcher's grace.
            "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(int(TRAIN_STOP_GRACE_SECONDS) - 5),
        },
    )
    return LaunchPlan(
        train=train,
        server=server,
        server_log=server_log,
        health_url=health_url,
        peer=peer,
        world_size=total,
        notes=notes,
        feedback_server=feedback.command if feedback else None,
        feedback_server_log=feedback.log if feedback else None,
        feedback_health_url=feedback.health_url if feedback else None,
    )


@dataclass(frozen=True)
class _FeedbackServer:
    command: Command
    log: str
    health_url: str


def _feedback_server(
    recipe_path, recipe, overrides, num_nodes, free_gpus, log_path, notes, python=sys.executable
) -> _FeedbackServer | None:
    """The feedback model's vLLM server, when the recipe wants one on loopback; None otherwise."""
    from urllib.parse import urlparse

    url = _setting(recipe, overrides, "feedback_server_url")
    if _setting(recipe, overrides, "feedback_source", "self") != "model" or not url:
        return None
    parsed = urlparse(str(url))
    if parsed.hostname not in (LOOPBACK, "localhost"):
        notes.append(f"feedback_server_url={url}: using that feedback model server, starting none")
        return None
    if num_nodes > 1:
        raise ValueError(
            f"feedback_server_url={url} is on loopback, but training spans {num_nodes} nodes and every training "
            "process calls the feedback server. Serve the feedback model at an address all nodes reach and set "
            "feedback_server_url to it."
        )
    if not free_gpus:
        raise ValueError("No GPU is left for the feedback model's vLLM server on this node.")
    model = _setting(recipe, overrides, "feedback_model_name_or_path")
    if not model:
        raise ValueError(f"Recipe {recipe_path} has feedback_source: model but no feedback_model_name_or_path.")
    port = parsed.port or 80
    gpu = {"CUDA_VISIBLE_DEVICES": free_gpus[0]}
    if _setting(recipe, overrides, "train_feedback_model", False):
        # A trained feedback model's weights are pushed to it after each of its updates: TRL's weight-transfer server,
        # like the rollout server, on loopback (its weight-update routes have no authentication).
        argv = _vllm_serve_command(recipe_path, recipe, overrides, port, 1, model_key="feedback_model_name_or_path")
        command = Command(argv, {**gpu, "VLLM_SERVER_DEV_MODE": "1"})
        kind = "trained, weight transfer on"
    else:
        # A frozen model needs no weight transfer: a plain OpenAI-compatible server, loopback only.
        argv = [
            python, "-m", "vllm.entrypoints.cli.main", "serve", str(model),
            "--host", LOOPBACK, "--port", str(port), "--served-model-name", str(model),
            "--gpu-memory-utilization", str(float(_setting(recipe, overrides, "vllm_gpu_memory_utilization", 0.9))),
        ]
        max_len = _setting(recipe, overrides, "vllm_max_model_length")
        if max_len is not None:
            argv += ["--max-model-len", str(int(max_len))]
        command = Command(argv, gpu)
        kind = "frozen"
    notes.append(f"feedback model {model} ({kind}): its own vLLM server on GPU {free_gpus[0]} at {LOOPBACK}:{port}")
    return _FeedbackServer(
        command, str(Path(log_path).with_name("vllm-feedback-server.log")), f"http://{LOOPBACK}:{port}/health"
    )


def _is_deepspeed(config: Path) -> bool:
    try:
        return (read_recipe(config).get("distributed_type") or "") == "DEEPSPEED"
    except (OSError, ValueError):
        return False


def _cpu_plan(recipe: dict, overrides: list[str], num_nodes: int, train: list[str]) -> LaunchPlan:
    if num_nodes > 1:
        raise ValueError("No GPUs found, but --num-nodes > 1: multi-node training needs GPU nodes.")
    notes = []
    if _setting(recipe, overrides, "feedback_source") == "model" and _setting(recipe, overrides, "feedback_server_url"):
        notes.append(
            "no GPU: no feedback model server is started; serve it at feedback_server_url yourself, or override "
            "--feedback_server_url '' to run the feedback model in process"
        )
    if _setting(recipe, overrides, "use_vllm", False):
        # vLLM's weight sync needs CUDA + NCCL, so a CPU run generates with transformers instead.
        notes.insert(0, "no GPU: running without vLLM (--use_vllm false added)")
        return LaunchPlan(train=Command([*train, *overrides, "--use_vllm", "false"]), notes=notes)
    return LaunchPlan(train=Command([*train, *overrides]), notes=["no GPU: running mtgrpo.train directly", *notes])


def format_plan(plan: LaunchPlan, server_timeout: float = DEFAULT_SERVER_TIMEOUT) -> str:
    """What `--dry-run` prints: every command and variable the launcher would use, in order."""
    lines = [f"# note: {note}" for note in plan.notes]
    step = 1
    if plan.server:
        lines += [f"# {step}. vLLM server (new process group, log: {plan.server_log}):", plan.server.shell()]
        step += 1
    if plan.feedback_server:
        lines += [
            f"# {step}. feedback model's vLLM server (new process group, log: {plan.feedback_server_log}):",
            plan.feedback_server.shell(),
        ]
        step += 1
    for url in (plan.health_url, plan.feedback_health_url):
        if url:
            lines.append(f"# {step}. wait up to {server_timeout:.0f} s for GET {url} to answer 200")
            step += 1
    if plan.peer and plan.train:
        lines.append(
            f"# {step}. wait up to {server_timeout:.0f} s for the main node's rendezvous {plan.peer}"
        )
        step += 1
    if plan.train:
        lines += [f"# {step}. training:", plan.train.shell()]
    else:
        lines.append(
            f"# {step}. serve until the training nodes' rendezvous {plan.peer} goes away, or a signal"
        )
    if plan.peer and plan.train:
        lines.append(f"# meanwhile: stop training if {plan.peer} stays unreachable (the main node died)")
    if plan.server or plan.feedback_server:
        lines.append("# then: stop the vLLM servers' process groups (also on failure, Ctrl-C or SIGTERM)")
    return "\n".join(lines)


def _log_tail(path: str | None, lines: int = 40) -> str:
    if not path or not Path(path).is_file():
        return "(no log)"
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64_000))
        text = f.read().decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def is_healthy(url: str) -> bool:
    # No proxy: an http_proxy set for downloads would otherwise intercept a localhost/cluster address.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_for_server(
    url: str,
    process: subprocess.Popen | None,
    timeout: float,
    log_path: str | None = None,
    poll_interval: float = 1.0,
) -> None:
    """Block until `url` answers 200. Raise ServerError (with the log's last lines) if `process` exits first
    or `timeout` seconds pass. `process` is None when the server runs on another node."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise ServerError(
                f"The vLLM server exited with code {process.returncode} before {url} answered. "
                f"Last lines of {log_path}:\n{_log_tail(log_path)}\n"
                "Fix the cause above (model name, GPU memory: lower vllm_gpu_memory_utilization or "
                "vllm_max_model_length, vLLM version: `mtgrpo doctor --config RECIPE`) and launch again."
            )
        if is_healthy(url):
            return
        if time.monotonic() > deadline:
            where = f"Last lines of {log_path}:\n{_log_tail(log_path)}\n" if process is not None else ""
            raise ServerError(
                f"The vLLM server did not answer {url} within {timeout:.0f} s. {where}"
                "Raise --server-timeout if it is still loading, or check that the main node started it and "
                "that the port is reachable from this node."
            )
        time.sleep(poll_interval)


def _start(command: Command, log_path: str | None = None) -> subprocess.Popen:
    # A new session makes the process the leader of its own group, so stopping it reaches every worker it
    # spawned (vLLM engine cores, torchrun ranks), and a terminal Ctrl-C reaches only us, who forward it.
    output = None
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        output = open(log_path, "ab")
    return subprocess.Popen(
        command.argv,
        env={**os.environ, **command.env},
        stdout=output,
        stderr=subprocess.STDOUT if output else None,
        start_new_session=True,
    )


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_process_group(
    process: subprocess.Popen | None, sig: int = signal.SIGTERM, grace: float = STOP_GRACE_SECONDS
) -> None:
    """Send `sig` to the process's whole group, wait up to `grace` seconds, then SIGKILL what is left."""
    if process is None:
        return
    pgid = process.pid
    if _group_alive(pgid):
        os.killpg(pgid, sig)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        process.poll()  # reap the leader, or it stays in the group as a zombie
        if not _group_alive(pgid):
            break
        time.sleep(0.2)
    if _group_alive(pgid):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


class _Interrupted(Exception):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum, _frame):
    raise _Interrupted(signum)


def exit_status(returncode: int) -> int:
    """A child's exit code as a shell reports it: 128 + N for a child killed by signal N (Popen says -N)."""
    return 128 - returncode if returncode < 0 else returncode


def reachable(address: str, timeout: float = 5.0) -> bool:
    """Whether `host:port` accepts a TCP connection."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


class PeerWatch:
    """Tracks whether the main node is alive: armed by its first answer, then lost after `timeout` seconds of
    silence. A node only learns of its peer's death from NCCL after 30 minutes otherwise."""

    def __init__(self, address: str, timeout: float):
        self.address, self.timeout = address, timeout
        self.seen = False
        self.last_seen = time.monotonic()

    def lost(self) -> bool:
        now = time.monotonic()
        if reachable(self.address, timeout=min(5.0, self.timeout)):
            self.seen, self.last_seen = True, now
            return False
        return self.seen and now - self.last_seen > self.timeout


def _wait_for_peer(address: str, timeout: float, poll_interval: float) -> None:
    deadline = time.monotonic() + timeout
    while not reachable(address):
        if time.monotonic() > deadline:
            raise ServerError(
                f"The main node's rendezvous {address} did not answer within {timeout:.0f} s. Start the main node "
                "(--node-rank 0) too, check --main-address/--main-port and that the port is open between nodes, "
                "or raise --server-timeout."
            )
        time.sleep(poll_interval)


def execute(
    plan: LaunchPlan,
    server_timeout: float = DEFAULT_SERVER_TIMEOUT,
    peer_timeout: float = DEFAULT_PEER_TIMEOUT,
    stop_grace: float = TRAIN_STOP_GRACE_SECONDS,
    poll_interval: float = 5.0,
) -> int:
    """Run a plan: server, health wait, training. Returns training's exit code (128 + N when it or the launcher
    got signal N, 1 when the vLLM server or the main node died). The server's process group is always stopped
    before returning; on a signal, training gets `stop_grace` seconds to save a checkpoint first."""
    server = training = feedback_server = None
    forwarded = signal.SIGTERM
    grace = stop_grace
    watch = PeerWatch(plan.peer, peer_timeout) if plan.peer else None
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if plan.server:
            print(f"[mtgrpo launch] starting vLLM server, log: {plan.server_log}", flush=True)
            server = _start(plan.server, plan.server_log)
        if plan.feedback_server:
            print(f"[mtgrpo launch] starting the feedback model's vLLM server, log: {plan.feedback_server_log}")
            feedback_server = _start(plan.feedback_server, plan.feedback_server_log)
        if plan.health_url:
            wait_for_server(plan.health_url, server, server_timeout, plan.server_log)
            print(f"[mtgrpo launch] vLLM server healthy at {plan.health_url}", flush=True)
        if plan.feedback_health_url:
            wait_for_server(plan.feedback_health_url, feedback_server, server_timeout, plan.feedback_server_log)
            print(f"[mtgrpo launch] feedback model server healthy at {plan.feedback_health_url}", flush=True)
        if plan.train is not None:
            if plan.peer:
                _wait_for_peer(plan.peer, server_timeout, min(poll_interval, 1.0))
            print(f"[mtgrpo launch] {plan.train.shell()}", flush=True)
            training = _start(plan.train)
        while True:
            if training is not None:
                try:
                    return exit_status(training.wait(timeout=poll_interval))
                except subprocess.TimeoutExpired:
                    pass
            elif server is not None:
                try:
                    server.wait(timeout=poll_interval)
                except subprocess.TimeoutExpired:
                    pass
            if server is not None and server.poll() is not None:
                raise ServerError(
                    f"The vLLM server exited with code {server.returncode} during training. "
                    f"Last lines of {plan.server_log}:\n{_log_tail(plan.server_log)}"
                )
            if feedback_server is not None and feedback_server.poll() is not None:
                raise ServerError(
                    f"The feedback model's vLLM server exited with code {feedback_server.returncode} during "
                    f"training. Last lines of {plan.feedback_server_log}:\n{_log_tail(plan.feedback_server_log)}"
                )
            if watch is not None and watch.lost():
                if training is None:
                    print(f"[mtgrpo launch] training nodes ({plan.peer}) are gone; stopping vLLM", flush=True)
                    return 0
                print(
                    f"[mtgrpo launch] the main node's rendezvous {plan.peer} has not answered for "
                    f"{peer_timeout:.0f} s: the main node (rank 0) has stopped or died; see its logs. Stopping this "
                    "node now instead of waiting for the NCCL timeout (30 min).",
                    file=sys.stderr,
                    flush=True,
                )
                # A checkpoint save would wait on the dead node's collectives: do not wait for it.
                grace = 10.0
                return 1
    except _Interrupted as interrupted:
        forwarded = interrupted.signum
        print(
            f"[mtgrpo launch] got {signal.Signals(forwarded).name}, stopping training (up to {stop_grace:.0f} s to "
            "save a checkpoint) and vLLM",
            file=sys.stderr,
            flush=True,
        )
        return 128 + forwarded
    except ServerError as error:
        print(f"[mtgrpo launch] {error}", file=sys.stderr)
        return 1
    finally:
        # Cleanup is bounded (grace + SIGKILL); a second Ctrl-C must not abandon the children half-way. The
        # server stays up until training has stopped: the step being finished may still need rollouts.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        stop_process_group(training, forwarded, grace=grace)
        stop_process_group(server, grace=STOP_GRACE_SECONDS if training is None else 10.0)
        stop_process_group(feedback_server, grace=10.0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtgrpo launch",
        usage="mtgrpo launch RECIPE [options] [--field value ...]",
        description="Start the vLLM rollout server and accelerate on this node for a recipe. "
        "Unknown --field value flags are recipe overrides passed to mtgrpo.train.",
        allow_abbrev=False,  # `--num` must not silently match `--num-gpus` instead of reaching mtgrpo.train
    )
    parser.add_argument("--config", help="the recipe (alternative to the positional RECIPE)")
    parser.add_argument("--num-gpus", type=int, help="GPUs on this node (default: detected)")
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--node-rank", type=int, default=0)
    parser.add_argument("--main-address", help="address of the rank-0 node (multi-node)")
    parser.add_argument("--main-port", type=int, default=29500, help="rendezvous port on the rank-0 node")
    parser.add_argument("--accelerate-config", help="accelerate YAML (default: picked from local_training/)")
    parser.add_argument("--log-dir", help="vLLM server log directory (default: <output_dir>/logs)")
    parser.add_argument(
        "--server-timeout", type=float, default=DEFAULT_SERVER_TIMEOUT, help="seconds to wait for /health"
    )
    parser.add_argument(
        "--generation-node",
        metavar="ADDRESS",
        help="dedicated vLLM node: the node with the last rank serves vLLM on all its GPUs at ADDRESS, the "
        "others train on all theirs (needs --num-nodes >= 2 and a vllm_mode: server recipe)",
    )
    parser.add_argument(
        "--peer-timeout",
        type=float,
        default=DEFAULT_PEER_TIMEOUT,
        help="seconds the main node may stay unreachable before this node stops (nodes other than rank 0)",
    )
    parser.add_argument(
        "--stop-grace",
        type=float,
        default=TRAIN_STOP_GRACE_SECONDS,
        help="seconds training gets to save a checkpoint after SIGTERM/Ctrl-C before it is killed",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the commands and variables, start nothing"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The recipe comes first so that values of unknown override flags are never taken for it.
    recipe = argv.pop(0) if argv and not argv[0].startswith("-") else None
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    recipe = recipe or args.config
    if not recipe:
        parser.error("give the recipe: mtgrpo launch RECIPE [options]")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        plan = plan_launch(
            recipe,
            num_gpus=detect_gpus() if args.num_gpus is None else args.num_gpus,
            num_nodes=args.num_nodes,
            node_rank=args.node_rank,
            main_address=args.main_address,
            main_port=args.main_port,
            accelerate_config=args.accelerate_config,
            train_overrides=overrides,
            visible_devices=visible or None,
            log_dir=args.log_dir,
            generation_node=args.generation_node,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"mtgrpo launch: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(format_plan(plan, args.server_timeout))
        return 0
    return execute(plan, args.server_timeout, peer_timeout=args.peer_timeout, stop_grace=args.stop_grace)


if __name__ == "__main__":
    sys.exit(main())
