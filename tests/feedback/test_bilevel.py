"""Bi-level training (train_feedback_model: true): two distinct tiny models, each trained only on its own tokens.

vLLM cannot run here: the weight sync to the feedback model's server is tested against FakeVLLMClient, a stand-in
for TRL's VLLMClient that records the calls (generation through it returns scripted token ids).
"""

import json

import pytest
import torch
from datasets import Dataset
from scripted import TINY_RUN, Collective, ScriptedGenerate
from transformers import TrainerCallback

from mtgrpo import MTGRPOConfig, MultiTurnGRPOTrainer
from mtgrpo.chat import ChatTurns
from mtgrpo.episodes import PlanEpisode, run_episodes
from mtgrpo.feedback.model import FeedbackSample, TransformersFeedbackModel
from mtgrpo.feedback.training import FEEDBACK_DIR, FeedbackPolicy


def length_reward(completions, **kwargs):
    """Differs between nearly any two random samples, so every group has non-zero advantages."""
    return [len(c[0]["content"]) / 100 for c in completions]


def math_answer_correct(completions, answer, **kwargs):
    return [float(a in c[0]["content"]) for c, a in zip(completions, answer, strict=False)]


def _args(tmp_path, tiny_feedback_model_dir, **overrides):
    fields = dict(
        output_dir=str(tmp_path),
        **TINY_RUN,
        feedback_source="model",
        feedback_model_name_or_path=str(tiny_feedback_model_dir),
        train_feedback_model=True,
        feedback_temperature=1.0,
        feedback_max_new_tokens=5,
        feedback_learning_rate=1e-2,
        feedback_device="cpu",
    )
    fields.update(overrides)
    return MTGRPOConfig(**fields)


def _trainer(args, model_dir, peft_config=None):
    dataset = Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "answer": str(2 * i)}
            for i in range(8)
        ]
    )
    return MultiTurnGRPOTrainer(
        model=str(model_dir),
        reward_funcs=[length_reward, math_answer_correct],
        args=args,
        train_dataset=dataset,
        peft_config=peft_config,
    )


def _hidden_grads(module, grads: list):
    """Keep the gradient of every output of `module` that takes part in a backward pass. On the final norm: its
    output at position i feeds only the logits at i, so the gradient there is non-zero only where a token predicted
    from position i is in the loss (TRL scores through a fused lm_head, so there are no logits to hook)."""

    def hook(_module, _inputs, output):
        if output.requires_grad:
            output.register_hook(lambda g: grads.append(g.detach().clone()))

    return module.register_forward_hook(hook)


def _changed(before: dict, model) -> bool:
    return any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def _assert_solver_gradient_only_on_its_tokens(inputs, grad):
    """`grad`: the final norm's output gradient in the solver's loss (see _hidden_grads)."""
    trained = (inputs["completion_mask"] * inputs["tool_mask"]).bool()
    width = trained.shape[1]  # position P - 1 + j predicts completion token j; nothing before P - 1 is scored
    reached = grad.abs().sum(-1) > 0
    assert not reached[:, : -(width + 1)].any() and not reached[:, -1].any()
    reached = reached[:, -(width + 1) : -1]
    assert reached.any() and not (reached & ~trained).any()
    assert ((inputs["completion_mask"] > 0) & (inputs["tool_mask"] == 0)).any()  # feedback tokens were there


def _assert_feedback_gradient_only_on_its_tokens(batch, fgrad):
    """`fgrad`: the final norm's output gradient in the feedback update, on the samples of `batch`."""
    assert len(batch) == 4 and all(isinstance(s, FeedbackSample) and s.completion_ids for s, _ in batch)
    assert any(a != 0 for _, a in batch)
    lengths = torch.tensor([len(s.completion_ids) for s, _ in batch])
    width = int(lengths.max())
    own = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
    freached = fgrad.abs().sum(-1) > 0
    assert (
        not freached[:, : -(width + 1)].any() and not freached[:, -1].any()
    )  # its prompt: the solver's attempt
    freached = freached[:, -(width + 1) : -1]
    assert freached.any() and not (freached & ~own).any()


@pytest.mark.parametrize("episode", ["refine", "plan"])
def test_one_bilevel_step_trains_each_policy_only_on_its_own_tokens(
    tiny_model_dir, tiny_feedback_model_dir, tmp_path, episode
):
    trainer = _trainer(
        _args(tmp_path, tiny_feedback_model_dir, episode=episode, episode_log_steps=1), tiny_model_dir
    )
    policy = trainer.feedback_policy
    solver, feedback = trainer.model, policy.model
    assert solver is not feedback and solver.config.hidden_size != feedback.config.hidden_size
    solver_ids = {id(p) for p in solver.parameters()}
    feedback_ids = {id(p) for p in feedback.parameters()}
    assert not solver_ids & feedback_ids
    assert {id(p) for g in policy.optimizer.param_groups for p in g["params"]} == feedback_ids

    solver_grads, feedback_grads, solver_inputs, feedback_batches = [], [], [], []
    _hidden_grads(solver.model.norm, solver_grads)
    _hidden_grads(feedback.model.norm, feedback_grads)
    compute_loss = trainer._compute_loss
    trainer._compute_loss = lambda model, inputs: (solver_inputs.append(inputs), compute_loss(model, inputs))[
        1
    ]
    update = policy.update
    policy.update = lambda batch: (feedback_batches.append(batch), update(batch))[1]
    solver_before = {k: v.clone() for k, v in solver.state_dict().items()}
    feedback_before = {k: v.clone() for k, v in feedback.state_dict().items()}
    trainer.train()

    # The solver: gradient reaches the logits of its own (tool_mask 1) tokens only, never the feedback or plan that
    # sits masked in its stream.
    assert trainer.optimizer is not None
    assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} <= solver_ids
    (inputs,) = solver_inputs
    (grad,) = solver_grads
    _assert_solver_gradient_only_on_its_tokens(inputs, grad)
    # The feedback model: gradient reaches the logits of the completion ids it sampled, in its own tokenizer, only.
    (batch,) = feedback_batches
    (fgrad,) = feedback_grads
    _assert_feedback_gradient_only_on_its_tokens(batch, fgrad)
    assert _changed(solver_before, solver) and _changed(feedback_before, feedback)
    logged = {k: v for entry in trainer.state.log_history for k, v in entry.items()}
    assert logged["feedback/learning_rate"] == pytest.approx(1e-2) and "feedback/loss" in logged
    assert {"refine": "feedback/improvement", "plan": "plan/mean_tokens"}[episode] in logged
    assert policy.updates == 1
    # Transcripts: the feedback model's turn is shown as trained (by its own update), with its own advantage.
    records = [
        json.loads(line) for line in (tmp_path / "episodes" / "step_000000.jsonl").read_text().splitlines()
    ]
    written = [t for r in records for t in r["turns"] if t["policy"] == "feedback"]
    assert len(written) == 4 and all(t["trained"] and t["advantage"] is not None for t in written)
    assert sorted(t["advantage"] for t in written) == pytest.approx(sorted(a for _, a in batch))


class Snapshots(TrainerCallback):
    """After each step (after the feedback schedule ran): did each policy's weights move, and the update count."""

    def __init__(self, trainer):
        self.trainer, self.steps = trainer, []
        self.last = self._weights()

    def _weights(self):
        return [
            {k: v.clone() for k, v in m.state_dict().items()}
            for m in (self.trainer.model, self.trainer.feedback_policy.model)
        ]

    def on_step_end(self, args, state, control, **kwargs):
        now = self._weights()
        moved = [any(not torch.equal(a[k], b[k]) for k in a) for a, b in zip(self.last, now, strict=True)]
        self.steps.append((state.global_step, *moved, self.trainer.feedback_policy.updates))
        self.last = now


def test_feedback_update_interval_2_updates_the_feedback_model_after_steps_2_and_4_only(
    tiny_model_dir, tiny_feedback_model_dir, tmp_path
):
    trainer = _trainer(
        _args(tmp_path, tiny_feedback_model_dir, max_steps=4, feedback_update_interval=2), tiny_model_dir
    )
    snapshots = Snapshots(trainer)
    trainer.add_callback(snapshots)
    trainer.train()
    # (step, solver moved, feedback moved, feedback updates so far)
    assert [(s, fb, n) for s, _, fb, n in snapshots.steps] == [
        (1, False, 0),
        (2, True, 1),
        (3, False, 1),
        (4, True, 2),
    ]
    assert all(solver for _, solver, _, _ in snapshots.steps)  # the solver is updated every step
    steps_with_loss = [e["step"] for e in trainer.state.log_history if "feedback/loss" in e]
    assert steps_with_loss == [2, 4]


def test_one_update_trains_on_every_generation_of_its_optimizer_step(
    tiny_model_dir, tiny_feedback_model_dir, tmp_path
):
    """Issue 21, item 7: steps_per_generation 1 < gradient_accumulation_steps 2 makes TRL generate twice (one prompt,
    two episodes each) for one optimizer step; its one feedback update must see both generations' samples."""
    args = _args(
        tmp_path,
        tiny_feedback_model_dir,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        steps_per_generation=1,
    )
    trainer = _trainer(args, tiny_model_dir)
    generated, updates = [], []
    rollout_func = trainer.rollout_func
    trainer.rollout_func = lambda prompts, trainer_=None: (
        generated.append(prompts),
        rollout_func(prompts, trainer_),
    )[1]
    update = trainer.feedback_policy.update
    trainer.feedback_policy.update = lambda batch: (updates.append(batch), update(batch))[1]
    trainer.train()
    assert len(generated) == 2 and generated[0] != generated[1]  # two generations, of two different prompts
    (batch,) = updates
    assert len(batch) == 4  # 2 generations x 2 episodes, each with its feedback sample
    tokenizer = trainer.feedback_policy.backend.tokenizer
    questions = [f"What is {i} + {i}?" for i in range(8)]
    asked = [q for s, _ in batch for q in questions if q in tokenizer.decode(s.prompt_ids)]
    assert len(asked) == 4 and len(set(asked)) == 2  # each sample's prompt holds its own question


def _assert_same_optimizer_states(first, resumed):
    """Both optimizers (the solver's, TRL's; the feedback policy's) hold bit-identical, non-empty states."""
    for a, b in (
        (first.optimizer, resumed.optimizer),
        (first.feedback_policy.optimizer, resumed.feedback_policy.optimizer),
    ):
        sa, sb = a.state_dict()["state"], b.state_dict()["state"]
        assert sa.keys() == sb.keys() and sa
        assert all(torch.equal(sa[i][name], sb[i][name]) for i in sa for name in sa[i])


def test_resume_restores_both_policies_and_both_optimizers(tiny_model_dir, tiny_feedback_model_dir, tmp_path):
    args = dict(max_steps=3, save_strategy="steps", save_steps=2, feedback_beta=0.1)
    first = _trainer(_args(tmp_path, tiny_feedback_model_dir, **args), tiny_model_dir)
    first.train()  # 3 steps, a checkpoint after step 2
    checkpoint = tmp_path / "checkpoint-2"
    saved = checkpoint / FEEDBACK_DIR
    assert {"optimizer.pt", "feedback_state.json", "config.json"} <= {p.name for p in saved.iterdir()}
    assert json.loads((saved / "feedback_state.json").read_text()) == {"updates": 2}

    # "Killed" after the checkpoint: a new trainer resumes from it and takes step 3 again.
    resumed = _trainer(_args(tmp_path, tiny_feedback_model_dir, **args), tiny_model_dir)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for a, b in ((first.model, resumed.model), (first.feedback_policy.model, resumed.feedback_policy.model)):
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    _assert_same_optimizer_states(first, resumed)
    assert resumed.feedback_policy.updates == first.feedback_policy.updates == 3
    assert any(
        "feedback/kl" in e for e in first.state.log_history
    )  # feedback_beta > 0: KL to its own reference

    resumed.save_model(str(tmp_path / "final"))
    assert (tmp_path / "final" / FEEDBACK_DIR / "model.safetensors").is_file()


class FakeVLLMClient:
    """Stands in for trl.generation.vllm_client.VLLMClient (vLLM cannot run here): records every call, answers
    `generate` with a fixed reply in token ids."""

    instances: list = []

    def __init__(self, base_url=None, group_port=51216, connection_timeout=0.0, **kwargs):
        self.base_url, self.group_port, self.calls = base_url, group_port, []
        FakeVLLMClient.instances.append(self)

    def init_communicator(self, device=0):
        self.calls.append(("init_communicator", str(device)))

    def generate(self, prompts, n=1, temperature=1.0, top_p=1.0, top_k=0, max_tokens=16, **kwargs):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(self.tokenizer_dir)
        reply = tok("Check the sum.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        self.calls.append(("generate", [list(p) for p in prompts], n, temperature, max_tokens))
        return {
            "prompt_ids": prompts,
            "completion_ids": [reply[:max_tokens] for _ in prompts],
            "logprobs": None,
        }

    def update_named_params(self, metadata, named_params):
        self.calls.append(
            ("update_named_params", [m[0] for m in metadata], {n: t.clone() for n, t in named_params})
        )

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))


def test_weights_are_pushed_to_the_feedback_server_after_each_update(
    tiny_model_dir, tiny_feedback_model_dir, tmp_path, monkeypatch
):
    import trl.generation.vllm_client

    monkeypatch.setattr(trl.generation.vllm_client, "VLLMClient", FakeVLLMClient)
    FakeVLLMClient.instances.clear()
    FakeVLLMClient.tokenizer_dir = str(tiny_feedback_model_dir)
    args = _args(
        tmp_path,
        tiny_feedback_model_dir,
        max_steps=2,
        feedback_server_url="http://127.0.0.1:8001/v1",
        feedback_max_new_tokens=8,
    )
    trainer = _trainer(args, tiny_model_dir)
    (client,) = FakeVLLMClient.instances
    assert client.base_url == "http://127.0.0.1:8001" and client.group_port == 51217
    trainer.train()
    kinds = [c[0] for c in client.calls]
    assert kinds == ["init_communicator"] + ["generate", "update_named_params", "reset_prefix_cache"] * 2
    generate = client.calls[1]
    assert generate[2:] == (
        1,
        1.0,
        8,
    )  # one sample per episode, feedback_temperature, feedback_max_new_tokens
    prompt = trainer.feedback_policy.backend.tokenizer.decode(
        generate[1][0]
    )  # its own template, ids not text
    assert (
        "What is" in prompt and "strict math tutor" in prompt and prompt.endswith("<|im_start|>assistant\n")
    )
    pushed = client.calls[-2][2]
    feedback = trainer.feedback_policy.model
    assert list(pushed) == [n for n, _ in feedback.named_parameters()]
    assert all(
        torch.equal(pushed[n], p) for n, p in feedback.named_parameters()
    )  # the weights after the update
    # A resumed run pushes the checkpoint's weights to the server (which starts from the original ones).
    trainer.feedback_policy.save(tmp_path / "fb")
    trainer.feedback_policy.load(tmp_path / "fb")
    assert [c[0] for c in client.calls[-2:]] == ["update_named_params", "reset_prefix_cache"]


class ThreadAccelerator:
    """What FeedbackPolicy uses of accelerate's Accelerator, for one of several threads standing in for processes."""

    def __init__(self, collective: Collective | None = None, rank: int = 0):
        self.collective, self.rank, self.device = collective, rank, torch.device("cpu")
        self.num_processes = collective.world if collective else 1
        self.is_main_process = rank == 0

    def reduce(self, tensor, reduction="sum"):
        return torch.stack(self.collective.all_gather(self.rank, tensor.clone())).sum(0)

    def wait_for_everyone(self):
        self.collective.barrier.wait()


@pytest.mark.parametrize("weights", ["separate", "lora"])
def test_two_processes_keep_identical_feedback_copies_equal_to_one_update_on_all_samples(
    tiny_feedback_model_dir, tmp_path, weights
):
    import threading

    from peft import LoraConfig, get_peft_model

    from mtgrpo.feedback.weights import AdapterFeedbackModel, AdapterWeights

    args = _args(tmp_path, tiny_feedback_model_dir, feedback_lora=weights == "lora")
    gen = torch.Generator().manual_seed(0)

    def sample(prompt_len, completion_len):
        ids = torch.randint(0, 1000, (prompt_len + completion_len,), generator=gen).tolist()
        return FeedbackSample("", ids[:prompt_len], ids[prompt_len:])

    local = [
        [(sample(5, 3), 1.0), (sample(7, 1), -1.0)],
        [(sample(4, 6), 0.5)],
    ]  # uneven, as processes may be

    def policy(accelerator):
        if weights == "separate":
            backend = TransformersFeedbackModel(str(tiny_feedback_model_dir), device="cpu", trainable=True)
            return FeedbackPolicy(backend, args, accelerator)
        # feedback_lora: each "process" has the solver's PeftModel; the feedback adapter is what is trained.
        base = TransformersFeedbackModel(str(tiny_feedback_model_dir), device="cpu").model
        torch.manual_seed(0)  # same initial adapters on every process, as TRL's set_seed gives
        lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
        solver = get_peft_model(base, lora)
        backend = AdapterFeedbackModel(str(tiny_feedback_model_dir), device="cpu", model=solver)
        policy = FeedbackPolicy(backend, args, accelerator, weights=AdapterWeights(solver, args))
        for p in policy.weights.params:  # LoRA's B starts at zero: give the update a gradient on A too
            p.data.normal_(0, 0.1, generator=torch.Generator().manual_seed(p.numel()))
        return policy

    collective = Collective(2)
    ranks = [policy(ThreadAccelerator(collective, rank)) for rank in range(2)]
    metrics = [None, None]

    def run(rank):
        metrics[rank] = ranks[rank].update(local[rank])

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    single = policy(ThreadAccelerator())
    single_metrics = single.update(local[0] + local[1])
    a, b, c = (p.model.state_dict() for p in (*ranks, single))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the copies stay identical
    assert any(not torch.equal(a[k], v) for k, v in policy(ThreadAccelerator()).model.state_dict().items())
    # = one update on every process's samples (up to float summation order; Adam's first step is about +-lr = 1e-2)
    assert all(torch.allclose(a[k], c[k], atol=1e-5) for k in a)
    assert (
        metrics[0]["feedback/loss"]
        == metrics[1]["feedback/loss"]
        == pytest.approx(single_metrics["feedback/loss"])
    )


class SamplingPlanner:
    """A trainable feedback model's interface: `sample` returns texts with ids (here made up)."""

    def __init__(self):
        self.calls = []

    def sample(self, conversations):
        self.calls.append(conversations)
        return [FeedbackSample(f"Plan {i}.", [1, 2], [10 + i, 0]) for i in range(len(conversations))]

    def generate(self, conversations):
        return [s.text for s in self.sample(conversations)]


def test_trained_plan_writer_samples_one_plan_per_episode(tokenizer):
    episode = PlanEpisode(
        feedback_source="model",
        plan_prompt="Plan it.",
        solve_with_plan_prompt="Now solve.",
        feedback_model=SamplingPlanner(),
        train_feedback_model=True,
    )
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 1 + 1?"}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    gen = ScriptedGenerate(tokenizer, [["The answer is 2."] * 4])
    rollouts = run_episodes(episode, [prompt] * 4, gen, ChatTurns(tokenizer), num_generations=4)
    assert len(episode.feedback_model.calls[0]) == 4  # one plan per episode, not one per prompt
    assert [r.state["feedback_sample"].completion_ids for r in rollouts] == [
        [10, 0],
        [11, 0],
        [12, 0],
        [13, 0],
    ]
    assert [(n, g) for n, g, _ in gen.calls] == [(4, 1)]  # distinct contexts: one sample each, even in vLLM
    adv = episode.advantages({"final": torch.tensor([1.0, 0.0, 0.0, 0.0])}, 4, "group")
    assert adv["plan"][0] > 0 > adv["plan"][1]


def _config(**fields):
    return MTGRPOConfig(output_dir="/tmp/unused", use_cpu=True, report_to=[], **fields)


MODEL = {"feedback_source": "model", "feedback_model_name_or_path": "m", "feedback_temperature": 1.0}


@pytest.mark.parametrize(
    "fields, message",
    [
        ({**MODEL, "feedback_update_interval": 0}, "feedback_update_interval=0 must be >= 1"),
        (
            {"train_feedback_model": True},
            "train_feedback_model=true .* feedback_source='self'. Set feedback_source: model",
        ),
        (
            {**MODEL, "train_feedback_model": True, "feedback_learning_rate": -1.0},
            "feedback_learning_rate=-1.0 must be",
        ),
        ({**MODEL, "train_feedback_model": True, "feedback_beta": -0.1}, "feedback_beta=-0.1 must be >= 0"),
        (
            {**MODEL, "train_feedback_model": True, "feedback_temperature": 0.0},
            "needs feedback_temperature > 0",
        ),
        ({**MODEL, "feedback_lora": True}, "feedback_lora=true .* train_feedback_model is false"),
        ({**MODEL, "train_feedback_model": True, "feedback_api_key_env": "K"}, "a hosted API cannot"),
        ({**MODEL, "feedback_reward": "improvement"}, "no feedback tokens are trained"),
    ],
)
def test_bad_bilevel_config_is_one_clear_error(fields, message):
    with pytest.raises(ValueError, match=message):
        _config(**fields)


def test_improvement_reward_is_accepted_for_a_trained_feedback_model():
    args = _config(
        **MODEL, train_feedback_model=True, feedback_reward="improvement", feedback_update_interval=16
    )
    assert args.feedback_update_interval == 16


def _eval(recipe, model_dir, out, *flags):
    from mtgrpo.evaluation import cli as eval_cli

    tiny = ["--limit", "2", "--max_completion_length", "4", "--feedback_max_new_tokens", "4"]
    argv = ["--config", recipe, "--model_name_or_path", str(model_dir), "--output_dir", str(out), *tiny, *flags]
    return eval_cli.main(argv)


def test_eval_uses_the_trained_feedback_model_saved_next_to_the_solver(
    tiny_model_dir, tiny_feedback_model_dir, tmp_path, capsys, monkeypatch
):
    import mtgrpo.feedback.model

    run = tmp_path / "run"
    trainer = _trainer(_args(run, tiny_feedback_model_dir), tiny_model_dir)
    trainer.train()
    trainer.save_model(str(run))
    loaded = []
    real_init = mtgrpo.feedback.model.TransformersFeedbackModel.__init__

    def spy(self, name_or_path, *args, **kwargs):
        loaded.append((name_or_path, kwargs.get("temperature")))
        real_init(self, name_or_path, *args, **kwargs)

    monkeypatch.setattr(mtgrpo.feedback.model.TransformersFeedbackModel, "__init__", spy)
    recipe = "recipes/smollm2-135m-instruct/arithmetic-bilevel.yaml"
    assert _eval(recipe, run, tmp_path / "eval") == 0
    assert loaded == [(str(run / FEEDBACK_DIR), 0.0)]  # the trained writer, greedy like the solver
    assert "Feedback model: the trained one in" in capsys.readouterr().err
    records = [json.loads(line) for line in (tmp_path / "eval" / "records.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(any(t["role"] == "feedback" for t in r["turns"]) for r in records)

    # A folder without a trained feedback model: one clear line, exit status 2, nothing written.
    assert _eval(recipe, tiny_model_dir, tmp_path / "eval2") == 2
    assert "holds no trained one" in capsys.readouterr().err and not (tmp_path / "eval2").exists()
    # --train_feedback_model false: the recipe's own feedback model, as asked.
    loaded.clear()
    flags = ["--train_feedback_model", "false", "--feedback_model_name_or_path", str(tiny_feedback_model_dir)]
    assert _eval(recipe, run, tmp_path / "eval3", *flags) == 0
    assert loaded == [(str(tiny_feedback_model_dir), 1.0)]


def test_separate_feedback_model_update_runs_without_dropout_when_disable_dropout(tmp_path):
    """Issue 21, item 10, for the feedback model's own weights: the tiny Llamas have no dropout module, so a tiny GPT-2
    with dropout 0.5 everywhere stands in. Its update (train mode) must see the log-probs sampling saw (eval mode)."""
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    from mtgrpo.feedback.training import completion_logps
    from mtgrpo.feedback.weights import SeparateWeights

    dropout = dict(resid_pdrop=0.5, embd_pdrop=0.5, attn_pdrop=0.5)
    torch.manual_seed(0)
    GPT2LMHeadModel(
        GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=1, n_head=2, **dropout)
    ).save_pretrained(tmp_path / "gpt2")
    args = _args(tmp_path, tmp_path / "gpt2", feedback_beta=0.1, disable_dropout=True)
    weights = SeparateWeights(AutoModelForCausalLM.from_pretrained(tmp_path / "gpt2").eval(), args, "cpu")
    gen = torch.Generator().manual_seed(0)
    samples = [FeedbackSample("", *torch.randint(0, 50, (2, 4), generator=gen).tolist()) for _ in range(3)]

    def logps(model):
        return completion_logps(model, samples, 0, torch.device("cpu"), 1.0)[0]

    with torch.no_grad():
        sampled = logps(weights.model)
        with weights.training():
            first, second = logps(weights.model), logps(weights.model)
        with weights.reference_model() as reference:
            reference.train()  # its mode does not matter: no dropout is left in it either
            reference_logps = logps(reference)
    assert torch.equal(first, sampled) and torch.equal(second, sampled)
    assert torch.equal(reference_logps, sampled)  # the same weights, so the same log-probs
