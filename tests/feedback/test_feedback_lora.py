"""feedback_lora: true — the solver and the feedback writer as two LoRA adapters on ONE tiny base model.

Same checks as tests/feedback/test_bilevel.py for two models, here on one: each adapter is trained only on its own role's
tokens, the base weights never move, the KL reference is the base model, kill-and-resume restores both adapters and
both optimizers, and the feedback adapter's merged weights go to its vLLM server (FakeVLLMClient stands in for TRL's
VLLMClient: vLLM cannot run here).
"""

import json

import pytest
import torch
from peft import LoraConfig
from test_bilevel import (
    FakeVLLMClient,
    _args,
    _assert_feedback_gradient_only_on_its_tokens,
    _assert_same_optimizer_states,
    _assert_solver_gradient_only_on_its_tokens,
    _eval,
    _hidden_grads,
    _trainer,
)
from trl.trainer.utils import use_adapter

from mtgrpo.feedback.model import FeedbackSample
from mtgrpo.feedback.training import FEEDBACK_DIR
from mtgrpo.feedback.weights import FEEDBACK_ADAPTER, AdapterWeights

LORA = LoraConfig(
    r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
)


def _lora_trainer(tmp_path, tiny_model_dir, **overrides):
    # The feedback "model" is the solver's own base model: feedback_model_name_or_path must name it.
    args = _args(tmp_path, tiny_model_dir, feedback_lora=True, feedback_device="auto", **overrides)
    return _trainer(args, tiny_model_dir, peft_config=LORA)


def _names(model, marker):
    return {n for n, _ in model.named_parameters() if marker in n}


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("checkpointing", [False, True], ids=["", "gradient_checkpointing"])
def test_one_step_trains_each_adapter_only_on_its_own_role_and_tokens(tiny_model_dir, tmp_path, checkpointing):
    trainer = _lora_trainer(tmp_path, tiny_model_dir, gradient_checkpointing=checkpointing)
    policy, model = trainer.feedback_policy, trainer.model
    assert isinstance(policy.weights, AdapterWeights)
    assert policy.model is model  # one base model for both roles, no second copy
    solver_names, feedback_names = _names(model, ".default."), _names(model, f".{FEEDBACK_ADAPTER}.")
    assert solver_names and len(feedback_names) == len(solver_names)
    by_id = {id(p): n for n, p in model.named_parameters()}
    assert {by_id[id(p)] for g in policy.optimizer.param_groups for p in g["params"]} == feedback_names

    # Which parameters receive a gradient in which phase (the solver's loss, or the feedback update).
    phase, received = ["solver"], []
    for name, p in model.named_parameters():
        if "lora_" in name:  # the base weights are frozen (checked below: they never move)
            trainable = p.requires_grad
            p.requires_grad_(
                True
            )  # a hook can only be registered on a tensor that requires grad; it stays after
            p.register_hook(lambda g, name=name: received.append((phase[0], name)))
            p.requires_grad_(trainable)
    norm_grads, solver_inputs, feedback_batches = [], [], []
    norm = model.get_base_model().model.norm
    _hidden_grads(norm, norm_grads)  # both roles' backward passes go through it: told apart by order
    compute_loss = trainer._compute_loss
    trainer._compute_loss = lambda m, inputs: (solver_inputs.append(inputs), compute_loss(m, inputs))[1]
    update = policy.update

    def feedback_update(batch):
        feedback_batches.append(batch)
        phase[0] = "feedback"
        try:
            return update(batch)
        finally:
            phase[0] = "solver"

    policy.update = feedback_update
    before = _weights(model)
    trainer.train()

    assert {by_id[id(p)] for g in trainer.optimizer.param_groups for p in g["params"]} == solver_names
    assert {n for ph, n in received if ph == "solver"} == solver_names
    assert {n for ph, n in received if ph == "feedback"} == feedback_names
    (inputs,), (batch,) = solver_inputs, feedback_batches
    solver_grad, feedback_grad = norm_grads  # the solver's loss, then the feedback update
    _assert_solver_gradient_only_on_its_tokens(inputs, solver_grad)
    _assert_feedback_gradient_only_on_its_tokens(batch, feedback_grad)
    after = _weights(model)
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved & solver_names and moved & feedback_names
    assert moved <= solver_names | feedback_names  # the base model never changes
    assert model.active_adapter == "default" and model.training  # the solver's adapter and mode are back
    assert policy.updates == 1


def test_kl_reference_is_the_base_model(tiny_model_dir, tmp_path):
    """LoRA's B starts at zero, so before its first update the feedback adapter IS the base model: KL exactly 0;
    after it, not."""
    trainer = _lora_trainer(tmp_path, tiny_model_dir, max_steps=2, feedback_beta=0.1)
    trainer.train()
    kl = [e["feedback/kl"] for e in trainer.state.log_history if "feedback/kl" in e]
    assert kl[0] == 0.0 and kl[1] > 0.0


def test_resume_restores_both_adapters_and_both_optimizers(tiny_model_dir, tmp_path):
    overrides = dict(max_steps=3, save_strategy="steps", save_steps=2)
    first = _lora_trainer(tmp_path, tiny_model_dir, **overrides)
    first.train()  # 3 steps, a checkpoint after step 2
    checkpoint = tmp_path / "checkpoint-2"
    saved = checkpoint / FEEDBACK_DIR
    assert {"feedback_adapter.safetensors", "optimizer.pt", "feedback_state.json"} <= {
        p.name for p in saved.iterdir()
    }
    assert json.loads((saved / "feedback_state.json").read_text()) == {"updates": 2}

    resumed = _lora_trainer(tmp_path, tiny_model_dir, **overrides)  # "killed" after the checkpoint
    resumed.train(resume_from_checkpoint=str(checkpoint))
    a, b = _weights(first.model), _weights(resumed.model)
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    _assert_same_optimizer_states(first, resumed)
    assert resumed.feedback_policy.updates == 3

    # The final save holds both adapters in PEFT's layout: the solver's at the top, the feedback writer's in feedback/.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    resumed.save_model(str(tmp_path / "final"))
    assert (tmp_path / "final" / FEEDBACK_DIR / "feedback_adapter.safetensors").is_file()
    loaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "final" / FEEDBACK_ADAPTER
    )
    trained = {
        n.replace(f".{FEEDBACK_ADAPTER}.", "."): p
        for n, p in resumed.model.named_parameters()
        if f".{FEEDBACK_ADAPTER}." in n
    }
    for name, p in loaded.named_parameters():
        if ".default." in name:
            assert torch.equal(p, trained[name.replace(".default.", ".")])


def test_eval_of_a_lora_run_uses_its_trained_feedback_adapter(tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    trainer = _lora_trainer(run, tiny_model_dir)
    trainer.train()
    trainer.save_model(str(run))
    # The solver's adapter (top level) and the feedback writer's (feedback/) both load onto the tiny base model.
    assert _eval("recipes/smollm2-135m-instruct/arithmetic-bilevel-lora.yaml", run, tmp_path / "eval") == 0
    assert f"Feedback model: the trained one in {run / FEEDBACK_ADAPTER}" in capsys.readouterr().err
    assert (tmp_path / "eval" / "records.jsonl").read_text().count('"role": "feedback"') == 2


def test_merged_feedback_adapter_is_pushed_to_its_server(tiny_model_dir, tmp_path, monkeypatch):
    import trl.generation.vllm_client
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(trl.generation.vllm_client, "VLLMClient", FakeVLLMClient)
    FakeVLLMClient.instances.clear()
    FakeVLLMClient.tokenizer_dir = str(tiny_model_dir)
    trainer = _lora_trainer(
        tmp_path, tiny_model_dir, feedback_server_url="http://127.0.0.1:8001/v1", feedback_max_new_tokens=8
    )
    (client,) = FakeVLLMClient.instances
    trainer.train()
    assert [c[0] for c in client.calls] == [
        "init_communicator",
        "generate",
        "update_named_params",
        "reset_prefix_cache",
    ]
    pushed = client.calls[2][2]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert set(pushed) == {
        n for n, _ in base.named_parameters()
    }  # the names a vLLM server of the base model has
    model = trainer.model
    q_proj = model.get_base_model().model.layers[0].self_attn.q_proj
    name = "model.layers.0.self_attn.q_proj.weight"
    expected = q_proj.base_layer.weight + q_proj.get_delta_weight(FEEDBACK_ADAPTER)
    assert torch.allclose(pushed[name], expected, atol=1e-6)
    assert not torch.allclose(pushed[name], q_proj.base_layer.weight)  # the update moved the feedback adapter
    assert not torch.allclose(pushed[name], q_proj.base_layer.weight + q_proj.get_delta_weight("default"))
    assert torch.allclose(
        q_proj.base_layer.weight, base.model.layers[0].self_attn.q_proj.weight, atol=1e-6
    )  # unmerged


def test_feedback_lora_needs_a_lora_solver_on_the_same_model(
    tiny_model_dir, tiny_feedback_model_dir, tmp_path
):
    with pytest.raises(ValueError, match="solver must be a LoRA adapter too: set use_peft: true"):
        _trainer(_args(tmp_path, tiny_model_dir, feedback_lora=True, feedback_device="auto"), tiny_model_dir)
    other = _args(tmp_path, tiny_feedback_model_dir, feedback_lora=True, feedback_device="auto")
    with pytest.raises(ValueError, match="is another model than the solver's"):
        _trainer(other, tiny_model_dir, peft_config=LORA)


def test_feedback_lora_is_refused_under_deepspeed_zero3(tiny_model_dir, tmp_path):
    """Read from accelerate's own attribute (AcceleratorState.deepspeed_plugin.zero_stage); the accelerator here is a
    stand-in: launching DeepSpeed for a config check would cost a minute."""
    from types import SimpleNamespace

    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from mtgrpo.feedback.weights import check_adapter_setup

    args = _args(tmp_path, tiny_model_dir, feedback_lora=True, feedback_device="auto")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LORA)
    plugin = SimpleNamespace(zero_stage=3)
    accelerator = SimpleNamespace(device=torch.device("cpu"), state=SimpleNamespace(deepspeed_plugin=plugin))
    with pytest.raises(ValueError, match="not supported with DeepSpeed ZeRO-3 .* Use ZeRO-2"):
        check_adapter_setup(args, model, accelerator)
    plugin.zero_stage = 2
    check_adapter_setup(args, model, accelerator)  # ZeRO-2 keeps whole weights on every process: fine
    # FSDP shards the weights like ZeRO-3 (issue 21, item 16): refused too (AcceleratorState.fsdp_plugin).
    fsdp = SimpleNamespace(device=torch.device("cpu"), state=SimpleNamespace(deepspeed_plugin=None, fsdp_plugin=object()))
    with pytest.raises(ValueError, match="not supported with FSDP"):
        check_adapter_setup(args, model, accelerator=fsdp)


def test_bilevel_docs_agree_with_the_hlt_llt_rr_1_15_ratio():
    # Issue 21, item 16: HLT_LLT_RR_1_15 is 1 feedback update per 15 solver updates; the value and the text agree.
    import re
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    assert yaml.safe_load((root / "recipes/llama-3.2-1b-instruct/math-bilevel.yaml").read_text())[
        "feedback_update_interval"] == 15  # fmt: skip
    for path in ["README.md", "docs/feedback_model.md", "mtgrpo/config.py", "recipes/llama-3.2-1b-instruct/math-bilevel.yaml"]:
        text = " ".join((root / path).read_text().split())
        for match in re.finditer("HLT_LLT_RR_1_15", text):
            near = text[max(0, match.start() - 200) : match.end() + 200]
            assert not re.search(r"\b16 (solver|=)|= 16\b|16th|per 16 solver", near), (path, near)


def _random_samples(count, vocab):
    gen = torch.Generator().manual_seed(0)
    ids = [torch.randint(0, vocab, (9,), generator=gen).tolist() for _ in range(count)]
    return [FeedbackSample("", i[:5], i[5:]) for i in ids]


def test_feedback_adapter_update_runs_without_dropout_when_disable_dropout(tiny_model_dir, tmp_path):
    """Issue 21, item 10: TRL disables dropout when it builds the trainer, before the feedback adapter exists. With
    disable_dropout the update's log-probs (train mode) must be the ones sampling had (eval mode), exactly."""
    from dataclasses import replace

    from mtgrpo.feedback.training import completion_logps

    args = _args(tmp_path, tiny_model_dir, feedback_lora=True, feedback_device="auto", disable_dropout=True)
    trainer = _trainer(args, tiny_model_dir, peft_config=replace(LORA, lora_dropout=0.5))  # large: it shows
    policy, model = trainer.feedback_policy, trainer.model
    for p in policy.weights.params:  # LoRA's B starts at zero, which would hide dropout on the adapter's input
        p.data.normal_(0, 0.5, generator=torch.Generator().manual_seed(p.numel()))
    samples = _random_samples(3, model.config.vocab_size)

    def logps():
        return completion_logps(model, samples, 0, torch.device("cpu"), 1.0)[0]

    with torch.no_grad():
        with use_adapter(model, FEEDBACK_ADAPTER):
            model.eval()  # as the feedback adapter samples
            sampled = logps()
        with policy.weights.training():
            first, second = logps(), logps()
    assert torch.equal(first, sampled) and torch.equal(second, sampled)


def test_pushes_leave_the_bf16_base_weights_bit_identical(tiny_model_dir, tmp_path):
    """Issue 21, item 12: merging the feedback adapter into the shared base weights and unmerging it rounds them (in
    bfloat16 a few ulp per push, accumulating). After 20 pushes the base weights are bit-identical, and every push is
    what PEFT's merge gives (base + delta, in the base's dtype)."""
    import copy
    from types import SimpleNamespace

    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from mtgrpo.feedback.training import FeedbackPolicy
    from mtgrpo.feedback.weights import AdapterFeedbackModel

    args = _args(tmp_path, tiny_model_dir, feedback_lora=True, feedback_device="auto")
    solver = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16), LORA)
    weights = AdapterWeights(solver, args)
    for name, p in solver.named_parameters():  # both adapters non-zero: only the feedback one may be pushed
        if "lora_" in name:
            p.data.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    backend = AdapterFeedbackModel(str(tiny_model_dir), device="cpu", model=solver)
    accelerator = SimpleNamespace(
        device=torch.device("cpu"), num_processes=1, is_main_process=True, wait_for_everyone=lambda: None
    )
    policy = FeedbackPolicy(backend, args, accelerator, client=FakeVLLMClient(), weights=weights)

    merged = copy.deepcopy(solver)
    merged.set_adapter(FEEDBACK_ADAPTER)
    merged.merge_adapter()  # PEFT's merge, once
    expected = {
        n.removeprefix("base_model.model.").replace(".base_layer", ""): p
        for n, p in merged.named_parameters()
        if "lora_" not in n
    }
    before = _weights(solver)
    for _ in range(20):
        policy.sync_weights()
    after = _weights(solver)
    assert all(torch.equal(before[n], after[n]) for n in before)  # the base (and both adapters) untouched
    pushes = [call[2] for call in policy.client.calls if call[0] == "update_named_params"]
    assert len(pushes) == 20
    for pushed in pushes:
        assert pushed.keys() == expected.keys()
        assert all(pushed[n].dtype == torch.bfloat16 and torch.equal(pushed[n], expected[n]) for n in expected)
    q_proj = "model.layers.0.self_attn.q_proj"
    assert not torch.equal(pushes[0][f"{q_proj}.weight"], before[f"base_model.model.{q_proj}.base_layer.weight"])


@pytest.mark.parametrize(
    "kind, found",
    [
        (dict(use_dora=True), "LoRA variants \\(use_dora"),
        (dict(lora_bias=True), "lora_bias"),
        (dict(modules_to_save=["norm"]), "fully trained modules"),
    ],
    ids=["dora", "lora_bias", "modules_to_save"],
)
def test_lora_kinds_the_server_push_cannot_merge_are_refused(tiny_model_dir, tmp_path, kind, found):
    """vllm_weights computes base + LoRA delta; a setup it would push wrongly is one clear error, when it pushes."""
    from dataclasses import replace
    from types import SimpleNamespace

    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from mtgrpo.feedback.weights import check_adapter_setup

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), replace(LORA, **kind))
    accelerator = SimpleNamespace(device=torch.device("cpu"), state=SimpleNamespace())
    server = "http://127.0.0.1:8001/v1"
    args = _args(tmp_path, tiny_model_dir, feedback_lora=True, feedback_device="auto", feedback_server_url=server)
    with pytest.raises(ValueError, match=f"does not cover {found}.* or unset feedback_server_url"):
        check_adapter_setup(args, model, accelerator)
    args.feedback_server_url = None
    check_adapter_setup(args, model, accelerator)  # generated in process: PEFT's own forward handles it
