"""Per-turn KL with gradient (recipe field `turn_kl`, e.g. {solve_stage1: 1.0}): SCoRe's first-turn KL.

TRL adds `beta * KL` to every trained token. `turn_kl` gives each credit key (Segment.credit) its own coefficient,
applied per token inside the loss, so the KL's gradient reaches exactly the tokens of those turns. TRL's pieces are
reused, not copied:
- the reference model: TRL builds it (or, with PEFT, uses the base model / a "ref" adapter) only when beta != 0, and
  computes reference log-probs in `_generate_and_score_completions` only then. With beta = 0 the mixin lends TRL a
  placeholder beta during those two calls and nothing else, so TRL's own code builds the model and scores the batch;
- the per-token KL: TRL's k3 estimator exp(ref - logp) - (ref - logp) - 1 (times the importance ratio with
  `use_bias_correction_kl`), on the log-probs of TRL's own forward pass in `_compute_loss`;
- the aggregation: the KL term is summed with the normaliser of the run's `loss_type`, exactly as TRL sums its
  `beta * KL` (the loss is linear in the per-token terms, so adding it after TRL's sum is the same as adding it
  per token before).
The coefficients travel as a (B, T) tensor `turn_kl_coef` in the batch dict, batch-first, so TRL's shuffle and split
keep it aligned with its rows. With no positive coefficient nothing here runs: the loss is TRL's, bit for bit.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

# Any non-zero beta makes TRL build the reference model and compute reference log-probs; the value is never used in
# a loss, because beta is back to 0 whenever TRL computes one.
_PLACEHOLDER_BETA = 1.0


def turn_kl_coefficients(rollouts, turn_kl: dict[str, float], width: int) -> torch.Tensor:
    """A (B, width) tensor: each trained token gets its credit key's coefficient (0 for keys not in `turn_kl`)."""
    out = torch.zeros(len(rollouts), width)
    for b, rollout in enumerate(rollouts):
        pos = 0
        for seg in rollout.segments:
            coef = turn_kl.get(seg.credit, 0.0) if seg.trained and seg.credit is not None else 0.0
            if coef:
                out[b, pos : pos + len(seg.ids)] = coef
            pos += len(seg.ids)
    return out


def _active(config) -> bool:
    return any(coef > 0 for coef in (getattr(config, "turn_kl", None) or {}).values())


class TurnKLMixin:
    """Adds `turn_kl` to a GRPOTrainer subclass whose episodes leave `self._rollouts` after TRL's rollout."""

    def __init__(self, *args, **kwargs):
        config = kwargs.get("args", args[2] if len(args) > 2 else None)
        lend = _active(config) and config.beta == 0.0
        if lend:
            config.beta = _PLACEHOLDER_BETA  # TRL builds the reference model only for beta != 0
        try:
            super().__init__(*args, **kwargs)
        finally:
            if lend:
                config.beta = 0.0
        if lend:
            self.beta = 0.0

    @contextmanager
    def _reference_logps_for_turn_kl(self):
        """While TRL scores a batch, a placeholder beta makes it compute `ref_per_token_logps` too."""
        lend = self.beta == 0.0
        if lend:
            self.beta = _PLACEHOLDER_BETA
        try:
            yield
        finally:
            if lend:
                self.beta = 0.0

    def _generate_and_score_completions(self, inputs):
        if not _active(self.args):
            return super()._generate_and_score_completions(inputs)
        with self._reference_logps_for_turn_kl():
            output = super()._generate_and_score_completions(inputs)
        width = output["completion_ids"].size(1)
        coef = turn_kl_coefficients(self._rollouts, self.args.turn_kl, width)
        output["turn_kl_coef"] = coef.to(device=output["completion_ids"].device)
        return output

    def _compute_loss(self, model, inputs):
        coef = inputs.get("turn_kl_coef")
        if coef is None or not bool((coef > 0).any()):
            # No token of this micro-batch carries a coefficient (e.g. SCoRe stage II batches): no KL term is built,
            # so the loss is TRL's bit for bit. The metric's collective still runs, as on the other processes.
            if coef is not None:
                self._log_turn_kl(coef.new_zeros(()), coef.new_zeros(()))
            return super()._compute_loss(model, inputs)
        # Keep the policy log-probs of TRL's one forward pass (with their graph) to build the KL term on.
        name = "_get_per_token_logps_and_entropies"
        shadowed = self.__dict__.get(name)
        forward = getattr(self, name)
        captured = []

        def capture(*args, **kwargs):
            out = forward(*args, **kwargs)
            captured.append(out[0])
            return out

        setattr(self, name, capture)
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            if shadowed is None:
                delattr(self, name)
            else:
                setattr(self, name, shadowed)
        per_token_logps = captured[0]
        mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]
        per_token_kl = _k3(inputs["ref_per_token_logps"], per_token_logps)
        if self.args.use_bias_correction_kl:
            per_token_kl = per_token_kl * self._importance_ratio(per_token_logps, inputs, mask)
        # Only tokens with a positive coefficient that are trained: elsewhere the KL may overflow (a padded token, a
        # turn far from the reference), and 0 * inf would make the whole loss NaN.
        selected = (coef > 0) & (mask > 0)
        term = torch.where(selected, coef * per_token_kl, torch.zeros_like(per_token_kl))
        loss = loss + self._aggregate_like_loss_type(term, mask, inputs)
        kept = torch.where(selected, per_token_kl.detach(), torch.zeros_like(per_token_kl))
        self._log_turn_kl(kept.sum(), selected.sum().to(kept.dtype))
        return loss

    def _importance_ratio(self, per_token_logps, inputs, mask):
        """coef_1 of TRL's `_compute_loss` (token or sequence level), for `use_bias_correction_kl`."""
        old = inputs.get("old_per_token_logps")
        log_ratio = per_token_logps - (per_token_logps.detach() if old is None else old)
        if self.importance_sampling_level == "sequence":
            log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
        return torch.exp(log_ratio)

    def _aggregate_like_loss_type(self, per_token: torch.Tensor, mask: torch.Tensor, inputs) -> torch.Tensor:
        """Sum a per-token term into the loss with the normaliser TRL uses for `self.loss_type`."""
        training = self.model.training
        accumulation = self.current_gradient_accumulation_steps if training else 1.0
        masked = per_token * mask
        if self.loss_type in ("grpo", "sapo"):
            return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean() / accumulation
        if self.loss_type == "bnpo":
            return masked.sum() / mask.sum().clamp(min=1.0) / accumulation
        if self.loss_type == "dr_grpo":
            return masked.sum() / (per_token.size(0) * self.max_completion_length) / accumulation
        if self.loss_type in ("cispo", "dapo", "vespo"):
            normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            if training:
                normalizer = normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation
            return masked.sum() / normalizer
        if self.loss_type == "luspo":
            return masked.sum(-1).mean() / accumulation
        raise ValueError(f"turn_kl does not know how loss_type {self.loss_type!r} normalises its loss.")

    def _log_turn_kl(self, kl_sum: torch.Tensor, count: torch.Tensor) -> None:
        """`turn_kl/kl`: mean KL over the trained tokens that carry a positive coefficient, over every process."""
        mode = "train" if self.model.training else "eval"
        stats = torch.stack([kl_sum.float(), count.float()])
        total, count = self.accelerator.reduce(stats, reduction="sum").tolist()
        if count:
            self._metrics[mode]["turn_kl/kl"].append(total / count)


def _k3(ref_per_token_logps: torch.Tensor, per_token_logps: torch.Tensor) -> torch.Tensor:
    # TRL's per-token KL estimator (grpo_trainer._compute_loss), as a function of the policy log-probs.
    diff = ref_per_token_logps - per_token_logps
    return torch.exp(diff) - diff - 1
