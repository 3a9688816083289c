"""The experiment programs: each a study function, its config file in :mod:`hpjax.configs` and
the line it prints at the end. ``hpjax PROGRAM --workdir W [--config...]`` (the installed
console command) and ``python experiments/PROGRAM.py ...`` run the same code.

    hpjax lr-sweep --workdir runs/lr_sweep --config.num_steps=1000
    hpjax search --workdir runs/search --config=:tpe,quick
    hpjax --help
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
from absl import logging

from hpjax import cli
from hpjax.studies.batch_size import runner
from hpjax.studies.capacity_study import run_capacity_study
from hpjax.studies.replay import run as replay_run
from hpjax.studies.replay.settings import check_before_training
from hpjax.studies.rnn import NothingToRetrainError, run_rnn_study
from hpjax.studies.search import run_search
from hpjax.studies.width_transfer_study import run_width_transfer
from hpjax.study import spec
from hpjax.study.run import train_and_evaluate

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def _lr_sweep(config, workdir: str) -> None:
    cli.run_study(config, workdir, _train_then_replay)


def _train_then_replay(config, workdir: str) -> list[dict]:
    """The study; with ``replay.run``, its schedulers replayed on its curves once finished
    (their settings checked before anything trains)."""
    replaying = spec.parse_replay(config)
    if replaying.run:
        check_before_training(replaying.schedulers, spec.parse(config).budget)
    rows = train_and_evaluate(config, workdir)
    if replaying.run and jax.process_index() == 0:
        result = replay_run.replay(
            workdir,
            replaying.schedulers,
            orders=replaying.orders,
            slots=replaying.slots,
            seed=replaying.seed,
        )
        print(replay_run.closing_line(result))
    return rows


def _print_paths(what: str, paths: dict[str, str]) -> None:
    """The line a study with a table, a report and a plot ends with (process 0 only)."""
    if paths:
        logging.info("%s outputs: %s", what, paths)
        print(f"{what} table: {paths['csv']}, report: {paths['report']}, plot: {paths['plot']}")


def _capacity_sweep(config, workdir: str) -> None:
    _print_paths("capacity", cli.run(run_capacity_study, config, workdir))


def _width_transfer(config, workdir: str) -> None:
    _print_paths("width transfer", cli.run(run_width_transfer, config, workdir))


def _batch_size_study(config, workdir: str) -> None:
    for name, path in cli.run(runner.run, config, workdir).items():
        print(f"{name}: report {path}")


def _rnn_study(config, workdir: str) -> None:
    try:
        result = cli.run(run_rnn_study, config, workdir)
    except NothingToRetrainError as error:  # every subset trial diverged
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    if "report" in result:  # process 0
        logging.info("rnn study outputs: %s", result)
        selected = ", ".join(f"{k}={v}" for k, v in result["selected"].items())
        print(f"selected: {selected}; table: {result['csv']}, report: {result['report']}")


def _search(config, workdir: str) -> None:
    rows = cli.run(run_search, config, workdir)
    ok = [r for r in rows if r["status"] != "diverged" and r.get("best_val_loss") is not None]
    if ok:
        best = min(ok, key=lambda r: r["best_val_loss"])
        print(
            f"best of {len(rows)} trials: number {best['number']} learning_rate="
            f"{best['learning_rate']:.3g} best_val_loss={best['best_val_loss']:.4f} "
            f"(report: {workdir}/search_report.md)"
        )


@dataclasses.dataclass(frozen=True)
class Program:
    run: Callable[[Any, str], None]
    config: str  # its config file in hpjax/configs
    summary: str  # one line for `hpjax --help`
    config_help: str = ""


PROGRAMS = {
    "lr-sweep": Program(
        _lr_sweep,
        "lr_sweep.py",
        "every learning rate (and seed, weight decay, batch size, sampled point) of the config "
        "trained at once; variants quasi_random, asha, pbt, budget",
    ),
    "replay": Program(
        _lr_sweep,
        "replay.py",
        "a dense learning-rate grid (32 rates x 3 seeds), then ASHA, Hyperband, median, "
        "Wilcoxon, patience and random search replayed on its curves: regret against budget",
    ),
    "capacity-sweep": Program(
        _capacity_sweep,
        "capacity_sweep.py",
        "hidden units x layers (or CNN channels x layers): which architecture, over rates",
    ),
    "width-transfer": Program(
        _width_transfer,
        "width_transfer.py",
        "the best learning rate across widths, standard parametrisation against μP",
    ),
    "batch-size-study": Program(
        _batch_size_study,
        "batch_size_study.py",
        "fixed epochs, steps to target and the gradient noise scale against the batch size",
        "Study config file (path[:study[,quick]]); override any key with --config.KEY=VALUE.",
    ),
    "rnn-study": Program(
        _rnn_study,
        "rnn_study.py",
        "LSTM or GRU, and how many layers, on sequences",
    ),
    "search": Program(
        _search,
        "search.py",
        "Optuna's samplers proposing whole populations, each trained as one program",
        "Search config file (path[:variant[,quick]]); override any key with --config.KEY=VALUE.",
    ),
}


def run_program(name: str, argv: list[str], doc: str = "") -> None:
    """Defines ``name``'s flags, parses ``argv`` (argv[0] is the program) and runs it."""
    program = PROGRAMS[name]
    default = os.path.join(CONFIGS, program.config)
    argv = [a.replace("--config=:", f"--config={default}:", 1) for a in argv]  # a variant alone
    sys.argv = argv  # ml_collections reads the overrides from sys.argv when defining --config
    config, workdir = cli.define_flags(default, program.config_help, doc)

    def main(rest: list[str]) -> None:
        del rest  # parse_flags refuses extra arguments
        program.run(config.value, workdir.value)

    cli.main(main)


def usage() -> str:
    width = max(map(len, PROGRAMS))
    lines = [
        "usage: hpjax PROGRAM --workdir=DIR [--config=FILE[:VARIANTS] | --config=:VARIANTS] "
        "[--config.KEY=VALUE ...]",
        "",
        "programs:",
    ]
    lines += [f"  {name:<{width}}  {p.summary}" for name, p in PROGRAMS.items()]
    lines += ["", "hpjax PROGRAM --help lists the program's config keys with their defaults."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """The ``hpjax`` console command: ``hpjax PROGRAM [flags]``."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0 if len(argv) >= 2 else 2)
    name = argv[1]
    if name not in PROGRAMS:
        print(f"error: unknown program {name!r}; allowed: {', '.join(PROGRAMS)}", file=sys.stderr)
        sys.exit(2)
    doc = f"hpjax {name}: {PROGRAMS[name].summary}.\n\n{__doc__.splitlines()[0]}"
    run_program(name, [f"hpjax {name}", *argv[2:]], doc)
