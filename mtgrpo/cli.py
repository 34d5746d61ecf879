"""`mtgrpo` command line: thin dispatch to each module's main().

    mtgrpo train --config RECIPE [--field value ...]
    mtgrpo demo                      # CPU demo: eval, train, eval on the bundled model
    mtgrpo prepare-model             # convert the bundled SmolLM2-135M-Instruct once
    mtgrpo eval --config RECIPE [--model_name_or_path PATH] [--limit N] [--output_dir DIR]
    mtgrpo plot RUN_DIR [--output DIR]  # training curves and eval bars as PNG
    mtgrpo launch RECIPE [...]       # node launcher (vLLM server + accelerate)
    mtgrpo doctor [--config RECIPE]
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("mtgrpo.train", "Train with a recipe (TrlParser: YAML defaults, CLI overrides)."),
    "demo": ("mtgrpo.demo", "CPU demo: evaluate, train and re-evaluate the bundled model."),
    "prepare-model": ("mtgrpo.models", "Convert the bundled SmolLM2-135M-Instruct into the local cache."),
    "eval": ("mtgrpo.evaluation.cli", "Evaluate a model with a recipe's episode protocol."),
    "plot": ("mtgrpo.evaluation.plot", "Plot training curves and eval results of a run directory."),
    "launch": ("mtgrpo.launch.cli", "Start vLLM + accelerate on a GPU node for a recipe."),
    "doctor": ("mtgrpo.launch.doctor", "Check this machine against a recipe's needs."),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = ["usage: mtgrpo COMMAND [args]", "", "commands:"]
        lines += [f"  {name:14} {help_}" for name, (_, help_) in COMMANDS.items()]
        print("\n".join(lines), file=sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nUnknown command {argv[0]!r}.", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
