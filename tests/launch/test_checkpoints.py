"""latest_checkpoint: the newest COMPLETE checkpoint wins; half-written ones are skipped with a warning."""

import json
import logging

from mtgrpo.launch.checkpoints import latest_checkpoint, missing_parts


def _checkpoint(root, step, *, state=True, weights=True, optimizer=True):
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if weights:
        (path / "model.safetensors").write_bytes(b"w")
    if optimizer:
        (path / "optimizer.pt").write_bytes(b"o")
    if state:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


def test_picks_newest_by_step_number_not_name(tmp_path):
    _checkpoint(tmp_path, 9)
    newest = _checkpoint(tmp_path, 10)  # "checkpoint-10" sorts before "checkpoint-9" as a string
    (tmp_path / "logs").mkdir()
    (tmp_path / "checkpoint-final").mkdir()
    assert latest_checkpoint(tmp_path) == str(newest)


def test_half_written_checkpoints_are_skipped_with_warning(tmp_path, caplog):
    complete = _checkpoint(tmp_path, 20)
    _checkpoint(tmp_path, 30, state=False)  # killed before trainer_state.json, which the Trainer writes last
    _checkpoint(tmp_path, 40, optimizer=False, state=False)  # killed right after the weights
    truncated = _checkpoint(tmp_path, 50)
    (truncated / "trainer_state.json").write_text('{"global_step": 5')  # killed mid-write
    with caplog.at_level(logging.WARNING, logger="mtgrpo.launch.checkpoints"):
        assert latest_checkpoint(tmp_path) == str(complete)
    skipped = " ".join(r.getMessage() for r in caplog.records)
    for step in (30, 40, 50):
        assert f"checkpoint-{step}" in skipped
    assert "trainer_state.json" in skipped and "optimizer state" in skipped


def test_no_checkpoint(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None
    assert latest_checkpoint(tmp_path) is None
    _checkpoint(tmp_path, 5, weights=False)
    assert latest_checkpoint(tmp_path) is None


def test_deepspeed_and_peft_layouts_count_as_complete(tmp_path):
    # ZeRO-3 without gathered weights: model and optimizer exist only as DeepSpeed shards under global_stepN/.
    zero3 = _checkpoint(tmp_path / "zero3", 7, weights=False, optimizer=False)
    (zero3 / "global_step7").mkdir()
    (zero3 / "global_step7" / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"m")
    (zero3 / "global_step7" / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"o")
    (zero3 / "latest").write_text("global_step7")
    assert missing_parts(zero3) == []
    (zero3 / "latest").unlink()  # DeepSpeed writes `latest` after its shards
    assert missing_parts(zero3) == ["model weights", "optimizer state"]

    peft = _checkpoint(tmp_path / "peft", 3, weights=False)
    (peft / "adapter_model.safetensors").write_bytes(b"a")
    assert latest_checkpoint(tmp_path / "peft") == str(peft)


# --- multi-node: shard counts, and one decision for every process -------------------------------------------

import os  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from mtgrpo.launch.checkpoints import CheckpointError  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _zero3(root, step, ranks):
    """A ZeRO-3 checkpoint as transformers + DeepSpeed write it, with optimizer shards for `ranks`."""
    path = _checkpoint(root, step, weights=False, optimizer=False)
    tag = path / f"global_step{step}"
    tag.mkdir()
    for rank in ranks:
        (tag / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt").write_bytes(b"m")
        (tag / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"o")
    (path / "latest").write_text(f"global_step{step}")
    return path


def test_partly_copied_deepspeed_checkpoint_is_skipped(tmp_path, caplog):
    # A SageMaker spot restart that downloaded only rank 0's shards of checkpoint-10 must resume from 5.
    older = _zero3(tmp_path, 5, range(2))
    _zero3(tmp_path, 10, [0])
    with caplog.at_level(logging.WARNING, logger="mtgrpo.launch.checkpoints"):
        assert latest_checkpoint(tmp_path, world_size=2) == str(older)
    assert "shards for 2 ranks (found rank 0" in caplog.text


def test_deepspeed_checkpoint_of_another_world_size_is_refused(tmp_path):
    _zero3(tmp_path, 5, range(4))
    with pytest.raises(CheckpointError, match="4 processes but this run has 2.*same number of nodes"):
        latest_checkpoint(tmp_path, world_size=2)
    assert latest_checkpoint(tmp_path, world_size=4) == str(tmp_path / "checkpoint-5")


# Two real processes in a gloo group stand in for two nodes (one process per node; there is one machine
# and no GPU here). Each runs in its own working directory with a relative output_dir, as train.py passes
# it, so each "node" has its own disk unless a scenario points both at one shared directory.
NODE = textwrap.dedent(
    """
    import json, os, sys
    import torch.distributed as dist
    from mtgrpo.launch.checkpoints import CheckpointError, agreed_checkpoint

    rank, port, scenarios = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    results = {}
    for scenario in scenarios:
        try:
            results[scenario] = agreed_checkpoint(scenario)
        except CheckpointError as error:
            results[scenario] = "error: " + str(error)
        dist.barrier()
    print(json.dumps(results))
    dist.destroy_process_group()
    """
)


def test_every_node_resumes_from_rank_zeros_choice(tmp_path):
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    shared = tmp_path / "shared"
    # Local disks: node 0 holds checkpoint-20, node 1 only an older copy of checkpoint-10.
    for node in nodes:
        _zero3(node / "local", 10, range(2))
    _zero3(nodes[0] / "local", 20, range(2))
    # Shared storage: both see the same files; checkpoint-30 was partly copied (rank 1's shard missing).
    _zero3(shared, 20, range(2))
    _zero3(shared, 30, [0])
    # Shared storage, one checkpoint from a 4-process run.
    _zero3(tmp_path / "bigger", 40, range(4))
    # Local disks where node 1's copy has every file: what SageMaker's S3 sync gives after a restart.
    for node in nodes:
        _zero3(node / "synced", 50, range(2))

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    scenarios = ["local", str(shared), str(tmp_path / "bigger"), "synced"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen([sys.executable, "-c", NODE, str(rank), port, *scenarios], cwd=node, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank, node in enumerate(nodes)
    ]  # fmt: skip
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    node0, node1 = (json.loads(out.splitlines()[-1]) for out, _ in outputs)

    # Rank 0 picked checkpoint-20, which node 1 does not have: both stop with the same storage message,
    # where before node 0 resumed at step 20 and node 1 at step 10.
    assert node0["local"] == node1["local"]
    assert node0["local"].startswith("error: Rank 0 resumes from local/checkpoint-20")
    assert "rank 1 on" in node0["local"] and "storage every node sees" in node0["local"]
    assert node0[str(shared)] == node1[str(shared)] == str(shared / "checkpoint-20")
    assert node0[str(tmp_path / "bigger")] == node1[str(tmp_path / "bigger")]
    assert "4 processes but this run has 2" in node0[str(tmp_path / "bigger")]
    assert node0["synced"] == node1["synced"] == "synced/checkpoint-50"
