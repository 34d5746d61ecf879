"""Planning one node's processes: the vLLM rollout server(s) plus `accelerate launch` of mtgrpo.train.

`plan_launch` is pure (reads the recipe, starts nothing); mtgrpo.launch.processes runs the plan and
mtgrpo.launch.cli is the command line (`mtgrpo launch RECIPE ...`). Unknown flags (`--learning_rate 1.0e-06`, `--vllm_tensor_parallel_size 2`, ...) are recipe overrides for
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
(mtgrpo.launch.signals.SaveOnSigterm) before killing it.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..recipe import read_recipe

ACCELERATE_CONFIGS = Path(__file__).resolve().parents[2] / "local_training"
DEFAULT_SERVER_TIMEOUT = 900.0  # a 7B model with CUDA-graph capture can take several minutes to come up
# SageMaker and docker stop send SIGKILL 120 s after SIGTERM; training gets most of that to save a checkpoint.
TRAIN_STOP_GRACE_SECONDS = 105.0
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
    node = _Node(recipe_path, read_recipe(recipe_path), list(train_overrides), num_nodes, node_rank, main_address,
                 main_port, python)
    if num_nodes < 1 or not 0 <= node_rank < num_nodes:
        raise ValueError(
            f"Node rank {node_rank} is not in [0, {num_nodes}). Pass --node-rank from 0 to --num-nodes - 1."
        )
    if num_nodes > 1 and not main_address:
        raise ValueError("Multi-node runs need --main-address: the IP or hostname of the node with rank 0.")
    if num_gpus == 0:
        return _cpu_plan(node.recipe, node.overrides, num_nodes, [python, *node.train_module])
    gpu_ids = _gpu_ids(num_gpus, visible_devices)
    output_dir = node.setting("output_dir", "trainer_output")
    log_path = str(Path(log_dir or Path(output_dir) / "logs") / "vllm-server.log")
    rollout = _rollout_server(node, gpu_ids, generation_node, log_path)
    if rollout.serving_only is not None:
        return rollout.serving_only
    notes = rollout.notes
    vllm_gpus = rollout.gpus
    feedback = _feedback_server(
        recipe_path, node.recipe, node.overrides, num_nodes, gpu_ids[vllm_gpus:], log_path, notes, python
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
    train_nodes = num_nodes - 1 if generation_node else num_nodes
    total = (num_gpus - vllm_gpus) * train_nodes
    train = _train_command(node, accelerate_config, total, train_nodes, rollout.host_flags, gpu_ids[vllm_gpus:])
    if node.peer:
        notes.append(f"waits for the main node's rendezvous {node.peer}, then stops if it goes away")
    return LaunchPlan(
        train=train,
        server=rollout.server,
        server_log=rollout.log,
        health_url=rollout.health_url,
        peer=node.peer,
        world_size=total,
        notes=notes,
        feedback_server=feedback.command if feedback else None,
        feedback_server_log=feedback.log if feedback else None,
        feedback_health_url=feedback.health_url if feedback else None,
    )


@dataclass(frozen=True)
class _Node:
    """What every part of a node's plan reads: the recipe with its overrides and the node's coordinates."""

    recipe_path: str
    recipe: dict
    overrides: list[str]
    num_nodes: int
    node_rank: int
    main_address: str | None
    main_port: int
    python: str

    def setting(self, key: str, default=None):
        return _setting(self.recipe, self.overrides, key, default)

    @property
    def train_module(self) -> list[str]:
        return ["-m", "mtgrpo.train", "--config", self.recipe_path]

    @property
    def peer(self) -> str | None:
        """The rendezvous store of the main training node: the other nodes wait for it, then watch it."""
        if self.num_nodes > 1 and self.node_rank > 0:
            return f"{self.main_address}:{self.main_port}"
        return None


def _gpu_ids(num_gpus: int, visible_devices: str | None) -> list[str]:
    gpu_ids = (
        [d.strip() for d in visible_devices.split(",")]
        if visible_devices
        else [str(i) for i in range(num_gpus)]
    )
    if len(gpu_ids) < num_gpus:
        raise ValueError(
            f"--num-gpus {num_gpus} but CUDA_VISIBLE_DEVICES lists only {len(gpu_ids)}: {visible_devices}."
        )
    return gpu_ids[:num_gpus]


@dataclass
class _RolloutServer:
    """The rollout vLLM server's part of the plan: what this node starts (if anything), the GPUs it takes and
    the flags that point training at it. `serving_only` is the whole plan of a dedicated generation node."""

    notes: list[str]
    gpus: int = 0
    server: Command | None = None
    log: str | None = None
    health_url: str | None = None
    host_flags: list[str] = field(default_factory=list)
    serving_only: LaunchPlan | None = None


def _rollout_server(node: _Node, gpu_ids: list[str], generation_node: str | None, log_path: str) -> _RolloutServer:
    notes: list[str] = []
    server_mode = bool(node.setting("use_vllm", False)) and node.setting("vllm_mode", "colocate") == "server"
    if server_mode and (external := node.setting("vllm_server_base_url")):
        notes.append(f"vllm_server_base_url={external}: using that server, starting none")
        server_mode = False
    if generation_node and not (server_mode and node.num_nodes >= 2):
        raise ValueError(
            "--generation-node needs --num-nodes >= 2 and a recipe with `use_vllm: true` and `vllm_mode: server` "
            "(the last node serves vLLM, the others train). Drop --generation-node, or add nodes."
        )
    port = int(node.setting("vllm_server_port", 8000))
    if generation_node:
        if node.node_rank == node.num_nodes - 1:
            return _RolloutServer(notes, serving_only=_generation_node_plan(node, gpu_ids, port, log_path, notes))
        notes.append(f"training on all GPUs {gpu_ids}; vLLM runs on the generation node {generation_node}")
        return _RolloutServer(
            notes,
            health_url=f"http://{generation_node}:{port}/health",
            host_flags=["--vllm_server_host", generation_node, "--vllm_server_port", str(port)],
        )
    if not server_mode:
        return _RolloutServer(notes)
    vllm_gpus = int(node.setting("vllm_tensor_parallel_size", 1))
    if vllm_gpus >= len(gpu_ids):
        raise ValueError(
            f"The vLLM server needs {vllm_gpus} GPU(s) (vllm_tensor_parallel_size) and training at least 1, but "
            f"this node has {len(gpu_ids)}. Lower vllm_tensor_parallel_size, or set `vllm_mode: colocate` "
            "(--vllm_mode colocate) to share the GPUs between generation and training."
        )
    # Only the main training process (global rank 0, on node 0) talks to the server, so it listens on
    # loopback: its dev-mode weight-update routes stay unreachable from the network.
    rollout = _RolloutServer(
        notes, gpus=vllm_gpus, host_flags=["--vllm_server_host", LOOPBACK, "--vllm_server_port", str(port)]
    )
    notes.append(f"GPU split: {gpu_ids[:vllm_gpus]} vLLM, {gpu_ids[vllm_gpus:]} training")
    if node.node_rank == 0:
        rollout.health_url = f"http://{LOOPBACK}:{port}/health"
        rollout.log = log_path
        rollout.server = Command(
            _vllm_serve_command(node.recipe_path, node.recipe, node.overrides, port, vllm_gpus),
            {"CUDA_VISIBLE_DEVICES": ",".join(gpu_ids[:vllm_gpus]), "VLLM_SERVER_DEV_MODE": "1"},
        )
    else:
        notes.append(
            f"vLLM runs on the main node {node.main_address} (loopback only); GPUs {gpu_ids[:vllm_gpus]} stay idle "
            "here. --generation-node puts vLLM on a node of its own and every other GPU to training"
        )
    return rollout


def _generation_node_plan(node: _Node, gpu_ids: list[str], port: int, log_path: str, notes: list[str]) -> LaunchPlan:
    """The dedicated generation node (the last rank): vLLM on all its GPUs, no training."""
    tensor_parallel = int(node.setting("vllm_tensor_parallel_size", 1))
    if len(gpu_ids) % tensor_parallel:
        raise ValueError(
            f"The generation node has {len(gpu_ids)} GPUs, not a multiple of vllm_tensor_parallel_size="
            f"{tensor_parallel}. Pick a tensor parallel size that divides the GPU count."
        )
    data_parallel = len(gpu_ids) // tensor_parallel
    notes.append(
        f"generation node: vLLM on GPUs {gpu_ids} (data parallel {data_parallel} x tensor parallel "
        f"{tensor_parallel}), bound to 0.0.0.0:{port} for the training nodes; open ports {port} and "
        "51216 (weight sync) to them only, the weight-update routes have no authentication"
    )
    server = Command(
        _vllm_serve_command(
            node.recipe_path, node.recipe, node.overrides, port, tensor_parallel, "0.0.0.0", data_parallel
        ),
        {"CUDA_VISIBLE_DEVICES": ",".join(gpu_ids), "VLLM_SERVER_DEV_MODE": "1"},
    )
    return LaunchPlan(
        train=None,
        server=server,
        server_log=log_path,
        health_url=f"http://{LOOPBACK}:{port}/health",
        peer=f"{node.main_address}:{node.main_port}",
        world_size=0,
        notes=notes,
    )


def _train_command(
    node: _Node, accelerate_config, total: int, train_nodes: int, host_flags: list[str], train_gpus: list[str]
) -> Command:
    """`accelerate launch ... -m mtgrpo.train --config RECIPE` on this node's training GPUs."""
    config = Path(accelerate_config) if accelerate_config else _default_accelerate_config(total, train_nodes)
    if not config.is_file():
        raise FileNotFoundError(
            f"Accelerate config {config} not found. Pass --accelerate-config PATH (see local_training/)."
        )
    accelerate = [node.python, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    accelerate += ["--num_processes", str(total), "--num_machines", str(train_nodes)]
    accelerate += ["--machine_rank", str(node.node_rank)]
    if node.num_nodes > 1:
        accelerate += ["--main_process_ip", node.main_address, "--main_process_port", str(node.main_port)]
    if train_nodes > 1 and _is_deepspeed(config):
        # accelerate's default multi-node DeepSpeed launcher (pdsh) writes the whole environment, tokens
        # included, to ./.deepspeed_env for its SSH fan-out; the standard launcher (torchrun per node) writes none.
        accelerate += ["--deepspeed_multinode_launcher", "standard"]
    return Command(
        [*accelerate, *node.train_module, *host_flags, *node.overrides],
        {
            "CUDA_VISIBLE_DEVICES": ",".join(train_gpus),
            # torchrun gives workers this long between forwarding SIGTERM and SIGKILL (default 30 s): long enough
            # for SaveOnSigterm to finish the step and save, short enough to end before the launcher's grace.
            "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(int(TRAIN_STOP_GRACE_SECONDS) - 5),
        },
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


