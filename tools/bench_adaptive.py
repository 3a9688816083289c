"""The default study searched several ways at equal cost, in one sitting: grid, quasi-random
with refill, ASHA, and population-based training against fixed hyperparameters.

  python tools/bench_adaptive.py [--workdir runs/bench_adaptive] [--quick]

Each study is ``experiments/lr_sweep.py`` with a variant of ``experiments/configs/lr_sweep.py``,
run one after another on this machine; the table is read from their workdirs (summary.csv,
populations.csv). The grid runs first: its trial-steps are the budget of the others.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from hpjax.results import files  # noqa: E402

BINARY = os.path.join(os.path.dirname(HERE), "experiments", "lr_sweep.py")
CONFIG = os.path.join(os.path.dirname(HERE), "experiments", "configs", "lr_sweep.py")
ONE_D = ["--config.space.weight_decay=(1.0,)", "--config.space.warmup_steps=(0,)"]
QUICK = [
    "--config.dataset=digits",
    "--config.model.hidden_units=32",
    "--config.model.num_layers=1",
    "--config.num_steps=200",
    "--config.eval_every=20",
    "--config.patience=3",
]


def run(workdir: str, variant: str | None, flags: list[str], quick: bool) -> dict:
    """Runs one study into ``workdir``; returns its figures."""
    config = [f"--config={CONFIG}:{variant}"] if variant else []
    extra = QUICK + (["--config.asha.min_steps=40", "--config.pbt.interval=40"] if quick else [])
    command = [sys.executable, BINARY, f"--workdir={workdir}", *config]
    command += ["--config.overwrite=True", "--config.restart=True"]  # train afresh, always
    command += (extra if quick else []) + flags + ["--config.make_report=False"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    rows = files.read_summary(workdir)
    (population,) = files.read_csv(os.path.join(workdir, "populations.csv"), key="population")
    best = min(
        (r for r in rows if r["best_val_loss"] is not None), key=lambda r: r["best_val_loss"]
    )
    statuses = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return {
        "trials": len(rows),
        "best_val_loss": best["best_val_loss"],
        "test_accuracy": best["test_accuracy"],
        "best": f"lr {best['learning_rate']:.3g}, wd {best['weight_decay']:.3g}"
        + (f", warmup {best['warmup_steps']}" if best.get("warmup_steps") is not None else ""),
        "trial_steps": population["trial_steps"],
        "training_fraction": population["training_fraction"],
        "wall_s": wall,
        "statuses": ", ".join(f"{v} {k}" for k, v in sorted(statuses.items())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/bench_adaptive")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke version")
    args = parser.parse_args()
    q = args.quick
    at = lambda name: os.path.join(args.workdir, name)  # noqa: E731
    results = {}
    results["grid (8 rates)"] = grid = run(at("grid"), None, [], q)
    budget = int(grid["trial_steps"])
    third = budget // 3
    same = [f"--config.budget_trial_steps={budget}"]
    studies = [
        ("quasi-random + refill, 3-D", "quasi_random,budget", same),
        ("ASHA, 3-D", "asha,budget", same),
        ("quasi-random + refill, rate only", "quasi_random,budget", same + ONE_D),
        ("ASHA, rate only", "asha,budget", same + ONE_D),
        (
            "ASHA, rate only, 1/3 budget, 4 slots",
            "asha,budget",
            [f"--config.budget_trial_steps={third}", "--config.slots=4"]
            + ONE_D
            + ([] if q else ["--config.asha.min_steps=100"]),
        ),
        ("8 fixed quasi-random trials", "pbt", ["--config.scheduler=none"]),
        ("PBT, 8 members", "pbt", []),
    ]
    for name, variant, flags in studies:
        slug = "".join(c if c.isalnum() else "_" for c in name)
        results[name] = run(at(slug), variant, flags, q)
    print(f"grid budget: {budget} trial-steps; a third: {third}\n")
    print(
        "| study | trials | best val loss | its test acc | best point | trial-steps "
        "| training fraction | wall s | statuses |"
    )
    print("|---|---:|---:|---:|---|---:|---:|---:|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['trials']} | {r['best_val_loss']:.4f} | {r['test_accuracy']:.3f} | "
            f"{r['best']} | {r['trial_steps']} | {r['training_fraction']:.3f} | "
            f"{r['wall_s']:.1f} | {r['statuses']} |"
        )


if __name__ == "__main__":
    main()
