"""Self-correction metrics (SCoRe's Acc@t1, Acc@final, Δ, Δ^{i→c}, Δ^{c→i}), shared by training and eval."""

from __future__ import annotations


def self_correction_metrics(first_correct: list[bool], final_correct: list[bool]) -> dict[str, float]:
    """Fractions over episodes; names are the metric names logged during training."""
    n = len(first_correct)
    if n == 0 or n != len(final_correct):
        raise ValueError(f"Need one turn-1 and one final flag per episode, got {n} and {len(final_correct)}.")
    first_acc = sum(first_correct) / n
    final_acc = sum(final_correct) / n
    return {
        "turns/1/accuracy": first_acc,
        "turns/final/accuracy": final_acc,
        "self_correction/delta": final_acc - first_acc,
        "self_correction/incorrect_to_correct": sum(not a and b for a, b in zip(first_correct, final_correct, strict=False)) / n,
        "self_correction/correct_to_incorrect": sum(a and not b for a, b in zip(first_correct, final_correct, strict=False)) / n,
    }
