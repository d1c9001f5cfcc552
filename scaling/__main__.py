"""``python -m scaling`` / ``scaling``: the list of commands, and a dispatcher to them.

Each command is its own module (``python -m scaling.ladder`` works as well); this entry only
imports the one asked for, so ``--help`` stays instant.
"""

from __future__ import annotations

import runpy
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "ladder": ("scaling.ladder", "plan, dispatch and track the weak-to-strong ladder (MIM -> CLIP, rung by rung)"),
    "study": ("scaling.study",
              "the ladder plus its random-init and scratch controls over seeds: the weak-to-strong gain"),
    "train": ("scaling.train", "run one stage (mim | clip) in the foreground"),
    "sweep": ("scaling.sweep", "Optuna ablation sweeps over a stage, workers local or on SLURM"),
    "analysis": ("scaling.analysis", "scaling plots, power-law fits and reports from MLflow"),
    "models": ("scaling.rungs", "the model zoo: rungs, parameter counts, FLOPs, memory and cost"),
    "synth": ("scaling.data.synth", "write the synthetic captioned-image world and its zero-shot sets"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: python -m scaling COMMAND [ARGS ...]   (or: python -m scaling.COMMAND)", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'python -m scaling COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"scaling: unknown command '{name}'\n\n{usage()}", file=sys.stderr)
        return 2
    module = COMMANDS[name][0]
    sys.argv = [f"python -m {module}", *rest]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except ImportError as exc:
        if exc.name and exc.name.startswith(module):
            print(f"scaling: command '{name}' is not available in this version ({exc})", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
