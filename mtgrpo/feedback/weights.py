"""Where a trainable feedback policy's weights live: its own full model, or a LoRA adapter on the solver's model.

FeedbackPolicy (mtgrpo/feedback/training.py) trains through one of these; both give it the same five things: the
parameters its optimizer owns, a context to train them in, the frozen reference for its KL, the named weights to push
to its vLLM server (VLLMWeights), and save/load.

- `SeparateWeights` (default): a second full model, loaded from `feedback_model_name_or_path`, with its own frozen
  copy as the KL reference (loaded only when `feedback_beta` > 0).
- `AdapterWeights` (`feedback_lora: true`): both roles on ONE base model, the solver's PeftModel (`use_peft: true`).
  The solver is TRL's LoRA adapter ("default"); the feedback writer is a second adapter, "feedback", with the same
  LoRA config. Only the active adapter takes part in a forward pass, and PEFT's `set_adapter` marks only the active
  adapter's parameters as requiring grad, so each adapter is trained only on its own role's tokens: TRL's solver
  loss runs with "default" active (its optimizer, built from the parameters requiring grad when training starts,
  holds "default" only), the feedback update with "feedback" active. The KL reference of both is the base model
  (adapters disabled), as TRL does for the solver: no extra copy in memory. Its server gets the base weights with the
  feedback adapter merged in, computed one layer at a time next to them: merging into the shared base weights and
  unmerging would round them (bfloat16) at every push.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from trl.trainer.utils import disable_dropout_in_model, use_adapter

from .model import Conversation, FeedbackSample, TransformersFeedbackModel

FEEDBACK_ADAPTER = "feedback"
# Not PEFT's adapter_model.safetensors: transformers would take a checkpoint subfolder holding that file for an
# adapter of its own and load it as a third adapter on resume.
_ADAPTER_WEIGHTS = "feedback_adapter.safetensors"


@dataclass
class VLLMWeights:
    """The weights to push to a vLLM server, in the two parts TRL's `VLLMClient.update_named_params` takes: it
    announces every tensor before it streams any, so the tensors can be computed one at a time as they are sent."""

    metadata: list[tuple[str, str, list[int]]]  # (name, vLLM's dtype name e.g. "bfloat16", shape), push order
    tensors: Iterator[tuple[str, torch.Tensor]]  # (name, tensor), in the same order


def _metadata(name: str, tensor: torch.Tensor) -> tuple[str, str, list[int]]:
    return name, str(tensor.dtype).removeprefix("torch."), list(tensor.shape)


class SeparateWeights:
    """The feedback policy as its own full model (float32, trainable, on the feedback device)."""

    def __init__(self, model, args, device):
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.reference = None
        if args.feedback_beta > 0:
            from transformers import AutoModelForCausalLM

            from ..models import resolve_model_path

            path = resolve_model_path(args.feedback_model_name_or_path)
            self.reference = AutoModelForCausalLM.from_pretrained(path, dtype="float32").to(device).eval()
            self.reference.requires_grad_(False)
        if args.disable_dropout:  # as TRL does to the solver: the update (train mode) sees what sampling saw
            disable_dropout_in_model(model)
            if self.reference is not None:
                disable_dropout_in_model(self.reference)
        if args.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    @property
    def has_reference(self) -> bool:
        return self.reference is not None

    @contextmanager
    def training(self):
        self.model.train()
        try:
            yield
        finally:
            self.model.eval()

    def reference_model(self):
        return nullcontext(self.reference)

    def vllm_weights(self) -> VLLMWeights:
        named = [(name, p.data) for name, p in self.model.named_parameters()]
        return VLLMWeights([_metadata(name, t) for name, t in named], iter(named))

    def save(self, directory: Path) -> None:
        self.model.save_pretrained(directory)

    def load(self, directory: Path) -> None:
        from transformers import AutoModelForCausalLM

        saved = AutoModelForCausalLM.from_pretrained(directory, dtype="float32")
        self.model.load_state_dict(saved.state_dict())


class AdapterWeights:
    """The feedback policy as the "feedback" LoRA adapter on the solver's PeftModel (see the module docstring)."""

    def __init__(self, peft_model, args):
        solver_adapter = peft_model.active_adapter
        if FEEDBACK_ADAPTER not in peft_model.peft_config:
            # Same rank, alpha, targets and dropout as the solver's adapter; LoRA's B starts at zero, so the feedback
            # writer starts as the base model, like the solver. add_adapter leaves the new adapter inactive and frozen.
            peft_model.add_adapter(FEEDBACK_ADAPTER, copy.deepcopy(peft_model.peft_config[solver_adapter]))
        if args.disable_dropout:
            # TRL disabled dropout when it built the trainer, before this adapter's LoRA dropout modules existed. The
            # update runs in train mode, sampling in eval mode: without this their log-probs would differ.
            disable_dropout_in_model(peft_model)
        self.model = peft_model
        marker = f".{FEEDBACK_ADAPTER}."
        self.params = [p for name, p in peft_model.named_parameters() if marker in name]
        for p in self.params:  # frozen until its own update, whatever the PEFT version: TRL's optimizer must skip it
            p.requires_grad_(False)
        self.has_reference = args.feedback_beta > 0

    @contextmanager
    def training(self):
        """The feedback adapter active and trainable, the solver's frozen; the solver's mode and adapter restored."""
        was_training = self.model.training
        with use_adapter(self.model, FEEDBACK_ADAPTER):
            self.model.train()
            try:
                yield
            finally:
                self.model.train(was_training)

    @contextmanager
    def reference_model(self):
        with use_adapter(self.model, None):  # every adapter disabled: the base model
            yield self.model

    def vllm_weights(self) -> VLLMWeights:
        """The base weights with the feedback adapter merged in, under the base model's names (what a vLLM server of
        the base model holds), as TRL pushes the solver's merged adapter. Each merged weight is PEFT's merge (base
        weight + the adapter's delta, in the base weight's dtype) computed into a new tensor when the push reaches
        it: the base weights are never written (check_adapter_setup refuses the LoRA kinds this does not cover)."""
        prefix = self.model.prefix  # "lora_"
        base = [
            (name.removeprefix("base_model.model.").replace(".base_layer", ""), p)
            for name, p in self.model.named_parameters()
            if prefix not in name and "original_module" not in name
        ]
        return VLLMWeights([_metadata(name, p) for name, p in base], self._merged(base))

    @torch.no_grad()  # on a generator function, torch applies it around each step, not to the code consuming it
    def _merged(self, base: list[tuple[str, torch.nn.Parameter]]) -> Iterator[tuple[str, torch.Tensor]]:
        layers = _lora_layers(self.model, FEEDBACK_ADAPTER).values()
        by_base_weight = {id(layer.get_base_layer().weight): layer for layer in layers}
        for name, p in base:
            layer = by_base_weight.get(id(p))
            if layer is None:
                yield name, p.data
            else:  # PEFT's Linear and Conv merge `weight += delta`: the sum in the wider dtype, rounded once
                yield name, (p.data + layer.get_delta_weight(FEEDBACK_ADAPTER)).to(p.dtype)

    def save(self, directory: Path) -> None:
        """The adapter's weights, for `load`. (PEFT's save of the solver model also writes every adapter, so a
        loadable PEFT folder of this one is `feedback/` next to the solver's adapter.)"""
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        state = get_peft_model_state_dict(self.model, adapter_name=FEEDBACK_ADAPTER)
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in state.items()}, str(directory / _ADAPTER_WEIGHTS)
        )

    def load(self, directory: Path) -> None:
        """In place (the optimizer keeps its parameters)."""
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        state = load_file(str(directory / _ADAPTER_WEIGHTS), device=str(self.params[0].device))
        result = set_peft_model_state_dict(self.model, state, adapter_name=FEEDBACK_ADAPTER)
        missing = [k for k in result.missing_keys if f".{FEEDBACK_ADAPTER}." in k]
        if missing:
            raise ValueError(
                f"{directory} does not hold the feedback adapter this run trains ({len(missing)} of its weights are "
                f"missing, e.g. {missing[0]}): it was saved with another LoRA config. Resume with the settings that "
                "saved it, or start in a new output_dir."
            )


def _lora_layers(model, adapter: str) -> dict:
    """The LoRA layers of `model` that hold `adapter`, by module name."""
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer) and adapter in m.scaling}


def _unmergeable_lora(model) -> str | None:
    """What in the solver's LoRA setup (which the feedback adapter copies) AdapterWeights.vllm_weights cannot push as
    base weight + delta, in words a user can act on; None when it can push it all."""
    from peft.tuners.lora import Embedding, Linear
    from peft.tuners.lora.layer import _ConvNd
    from peft.utils.other import AuxiliaryTrainingWrapper

    adapter = model.active_adapter
    if any(isinstance(m, AuxiliaryTrainingWrapper) for m in model.modules()):
        return "fully trained modules (lora_modules_to_save / trainable tokens)"
    for name, layer in _lora_layers(model, adapter).items():
        # peft >= 0.16 keeps DoRA and the like in lora_variant; 0.15 (our lower bound) only has use_dora.
        if getattr(layer, "lora_variant", {}).get(adapter) or getattr(layer, "use_dora", {}).get(adapter):
            return "LoRA variants (use_dora and the like)"
        if layer.lora_bias.get(adapter):
            return "lora_bias"
        if not isinstance(layer, (Linear, Embedding, _ConvNd)):  # quantized, target_parameters, attention
            return f"LoRA on {type(layer).__module__}.{type(layer).__name__} layers ({name})"
    return None


class AdapterFeedbackModel(TransformersFeedbackModel):
    """Generates on the solver's PeftModel with the feedback adapter active (TRL's generation uses the solver's)."""

    def sample(self, conversations: list[Conversation]) -> list[FeedbackSample]:
        with use_adapter(self.model, FEEDBACK_ADAPTER):
            return super().sample(conversations)


def check_adapter_setup(args, model, accelerator) -> None:
    """feedback_lora's requirements on the trainer, as one clear error each (ValueError: exit status 2)."""
    from accelerate.utils import is_peft_model

    from ..models import resolve_model_path

    if not is_peft_model(model):
        raise ValueError(
            "feedback_lora=true puts the feedback writer on the solver's base model as a second LoRA adapter, so the "
            "solver must be a LoRA adapter too: set use_peft: true (with lora_r, lora_alpha, lora_target_modules), "
            "or set feedback_lora: false for a separate full feedback model."
        )
    base = model.get_base_model().config.name_or_path
    wanted = resolve_model_path(args.feedback_model_name_or_path)
    if Path(str(wanted)).resolve() != Path(str(base)).resolve() and str(wanted) != str(base):
        raise ValueError(
            f"feedback_lora=true shares the solver's base model, but feedback_model_name_or_path="
            f"{args.feedback_model_name_or_path!r} is another model than the solver's ({base}). Set it to the "
            "solver's model_name_or_path, or set feedback_lora: false to train a separate feedback model."
        )
    device = args.feedback_device
    if device != "auto" and torch.device(device) != accelerator.device:
        raise ValueError(
            f"feedback_lora=true runs the feedback adapter on the solver's model, on {accelerator.device}, but "
            f"feedback_device={device!r}. Remove feedback_device (or set it to auto)."
        )
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None and getattr(plugin, "zero_stage", 0) == 3:
        raise ValueError(
            "feedback_lora=true is not supported with DeepSpeed ZeRO-3 (the feedback adapter's update runs outside "
            "the DeepSpeed engine, which shards its weights). Use ZeRO-2 or no DeepSpeed, or feedback_lora: false."
        )
    unmergeable = _unmergeable_lora(model) if args.feedback_server_url else None
    if unmergeable:
        raise ValueError(
            f"feedback_lora=true with feedback_server_url pushes the feedback adapter to its server as base weights + "
            f"LoRA delta, which does not cover {unmergeable}. Use plain LoRA (use_dora: false, no "
            "lora_modules_to_save, an unquantized model), or unset feedback_server_url to generate in process."
        )
    if getattr(accelerator.state, "fsdp_plugin", None) is not None:  # FSDP shards the weights the same way
        raise ValueError(
            "feedback_lora=true is not supported with FSDP (the feedback adapter's update runs outside the FSDP "
            "wrapper, which shards its weights). Use DDP or DeepSpeed ZeRO-2, or feedback_lora: false."
        )
