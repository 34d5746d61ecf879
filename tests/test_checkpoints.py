"""latest_checkpoint: the newest COMPLETE checkpoint wins; half-written ones are skipped with a warning."""

import json
import logging

from mtgrpo.checkpoints import latest_checkpoint, missing_parts


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
    with caplog.at_level(logging.WARNING, logger="mtgrpo.checkpoints"):
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
