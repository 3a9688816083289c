"""Batch-size studies that reproduce published shapes, with memory and speed per batch size.

Three studies, each in ``<workdir>/<study>/``:

- ``fixed_epochs`` (Mishkin, Sergievskiy and Matas 2016, arXiv 1606.02228): every batch size
  trained for the same number of epochs, with one fixed learning rate, with the rate scaled by a
  rule (linear ``lr * B / B0``, square root; optional warmup in epochs, Goyal et al. 2017), and
  tuned per batch size over a learning-rate grid (the grid and the batch sizes vmapped together in
  one population). Engine runs: ``grid/`` (the fixed rate is one of its rates) and ``<rule>/``.
- ``steps_to_target`` (Shallue et al. 2018, arXiv 1811.03600): for each batch size, the fewest
  optimizer steps at which any rate of its grid first reaches a target validation metric. Each
  batch size is one engine run ``bs_NNNN/`` (its grid vmapped) with its own step budget, since
  large batches need many epochs and small ones many steps.
- ``noise_scale`` (McCandlish et al. 2018, arXiv 1812.06162): the simple noise scale
  ``B_simple`` measured along the training of one trial with the unbiased two-batch estimator
  (:mod:`hpjax.noise_scale`), in a small loop over :mod:`hpjax.population`, next to the
  steps-to-target curve (whose runs it reuses or makes).

Each study writes its CSV, PNG plots under ``plots/`` and ``study_report.md`` with the numbers
and how they compare with the published shape. ``fixed_epochs`` and ``steps_to_target`` also
measure, per batch size, the compiled memory of the training step (XLA's memory analysis) and
the examples per second of one trial (``compute.csv``). An engine run whose directory already
holds the finished run of the same config is reused, not trained again.
"""

from __future__ import annotations

import os

from absl import logging

from hpjax import data as data_lib
from hpjax.config import as_tuple, config_to_dict
from hpjax.report import markdown
from hpjax.report import setup as report_setup
from hpjax.results import files
from hpjax.studies.batch_size.analysis import (
    first_reaching,
    fit_with_interval,
    fixed_epochs_rows,
    higher_is_better,
    merge_compute,
    noise_trial,
    steps_to_target,
)
from hpjax.studies.batch_size.config import (
    FIXED_EPOCHS_COLUMNS,
    NOISE_COLUMNS,
    REPORT,
    STEPS_COLUMNS,
    STEPS_TRIAL_COLUMNS,
    check_batch_sizes,
    check_engine_config,
    engine_configs,
    fixed_epochs_configs,
    noise_config,
    steps_to_target_configs,
    studies,
    validate_config,
)
from hpjax.studies.batch_size.measure import (
    measure_compute,
    measure_noise_scale,
    run_engine,
    same_run,
)
from hpjax.studies.batch_size.plots import (
    plot_compute,
    plot_fixed_epochs,
    plot_grid_heatmap,
    plot_noise_along_training,
    plot_steps_to_target,
)
from hpjax.studies.batch_size.prose import (
    compute_section,
    describe_fixed_epochs,
    describe_noise,
    describe_steps,
    engine_section,
    noise_intro,
    setup_sentence,
    write_report,
)

FIXED_EPOCHS_TABLE = (
    "rule",
    "batch_size",
    "learning_rate",
    "status",
    "steps",
    "epochs",
    "final_val_accuracy",
    "final_val_loss",
    "test_accuracy",
)


def run_fixed_epochs(config, workdir: str, dataset: data_lib.Dataset) -> list[dict]:
    """The fixed-epochs study into ``workdir``; returns its rows (also ``fixed_epochs.csv``)."""
    s = config.fixed_epochs
    os.makedirs(workdir, exist_ok=True)
    configs = fixed_epochs_configs(config)
    runs = {
        name: run_engine(cfg, os.path.join(workdir, name), f"fixed epochs, run {i}/{len(configs)}")
        for i, (name, cfg) in enumerate(configs.items(), start=1)
    }
    rows, grid_rows = fixed_epochs_rows(runs, float(s.learning_rate))
    sizes = check_batch_sizes(s.batch_sizes, "fixed_epochs.batch_sizes")
    compute_rows = measure_compute(config, dataset, sizes, workdir)
    merge_compute(rows, compute_rows)
    columns = FIXED_EPOCHS_COLUMNS + ("temp_bytes", "peak_bytes", "examples_per_s", "ms_per_step")
    files.write_csv(os.path.join(workdir, "fixed_epochs.csv"), rows, columns)
    title = f"at {s.num_epochs:g} epochs"
    plots = [
        plot_fixed_epochs(
            rows,
            "final_val_accuracy",
            "test_accuracy",
            os.path.join(workdir, "plots", "accuracy_vs_batch_size.png"),
            f"accuracy against batch size {title}",
        ),
        plot_fixed_epochs(
            rows,
            "final_val_loss",
            "test_loss",
            os.path.join(workdir, "plots", "loss_vs_batch_size.png"),
            f"loss against batch size {title}",
        ),
        plot_grid_heatmap(
            grid_rows,
            "final_val_accuracy",
            os.path.join(workdir, "plots", "lr_grid_accuracy.png"),
            f"final validation accuracy {title}, learning rate x batch size",
        ),
    ]
    if compute_rows:
        plots.append(plot_compute(compute_rows, os.path.join(workdir, "plots", "compute.png")))
    intro = [
        f"Every batch size trained for {s.num_epochs:g} epochs ({config.optimizer}, "
        f"`{config.model.name}` on `{config.dataset}`): `fixed` uses the rate "
        f"{s.learning_rate:g} at every batch size, each scaling rule scales it from "
        f"B0={s.base_batch_size}"
        + (f" with {s.warmup_epochs:g} warmup epochs" if s.warmup_epochs else "")
        + ", and `tuned` is the best rate of the grid "
        f"{tuple(float(v) for v in as_tuple(s.learning_rates))} per batch size (all rates and "
        f"batch sizes in one population, batch_axis={s.batch_axis!r}). Final validation "
        "metrics are those at the end of the budget (equal epochs); the test metrics are the "
        "engine's, at each trial's lowest validation loss.",
        "",
        report_setup.setup_sentence(
            files.read_config(os.path.join(workdir, "grid")), runs["grid"][0], ranked=False
        ),
    ]
    write_report(
        workdir,
        "Batch size at equal epochs (Mishkin et al. 2016)",
        [
            ("Setup", intro),
            (
                "Measured against the published shape",
                describe_fixed_epochs(rows, float(s.learning_rate), int(s.base_batch_size)),
            ),
            ("Results", [markdown.markdown_table(rows, FIXED_EPOCHS_TABLE)]),
            (
                "Memory and speed per batch size",
                compute_section(compute_rows) + engine_section(workdir, list(runs)),
            ),
        ],
        [os.path.relpath(p, workdir) for p in plots],
    )
    return rows


def collect_steps_to_target(
    config, workdir: str, dataset: data_lib.Dataset
) -> tuple[list[dict], list[dict], dict | None]:
    """Runs (or reuses) the engine run of every batch size; returns ``(per_size, per_trial,
    fit)``."""
    s = config.steps_to_target
    os.makedirs(workdir, exist_ok=True)
    summary: list[dict] = []
    metrics_rows: list[dict] = []
    offset = 0
    configs = steps_to_target_configs(config, dataset.num_train)
    for i, (b, cfg) in enumerate(configs.items(), start=1):
        part = f"steps to target, batch size {b} ({i} of {len(configs)})"
        rows, records = run_engine(cfg, os.path.join(workdir, f"bs_{b:04d}"), part)
        # Trials are numbered per run; renumber them so that batch sizes do not collide.
        summary += [dict(r, trial=r["trial"] + offset) for r in rows]
        metrics_rows += [dict(r, trial=r["trial"] + offset) for r in records]
        offset += len(rows)
    per_size, per_trial = steps_to_target(summary, metrics_rows, s.metric, float(s.target))
    return per_size, per_trial, fit_with_interval(per_size)


def run_steps_to_target(
    config, workdir: str, dataset: data_lib.Dataset
) -> tuple[list[dict], list[dict], dict | None]:
    """The steps-to-target study into ``workdir``; returns ``(per_size, per_trial, fit)``."""
    s = config.steps_to_target
    per_size, per_trial, fit = collect_steps_to_target(config, workdir, dataset)
    sizes = check_batch_sizes(s.batch_sizes, "steps_to_target.batch_sizes")
    compute_rows = measure_compute(config, dataset, sizes, workdir)
    merge_compute(per_size, compute_rows)
    extra = ("temp_bytes", "peak_bytes", "examples_per_s", "ms_per_step")
    files.write_csv(os.path.join(workdir, "steps_to_target.csv"), per_size, STEPS_COLUMNS + extra)
    files.write_csv(
        os.path.join(workdir, "steps_to_target_trials.csv"), per_trial, STEPS_TRIAL_COLUMNS
    )
    op = ">=" if higher_is_better(s.metric) else "<="
    plots = [
        plot_steps_to_target(
            per_size,
            per_trial,
            fit,
            os.path.join(workdir, "plots", "steps_to_target.png"),
            f"steps to {s.metric} {op} {s.target:g}",
        ),
    ]
    if compute_rows:
        plots.append(plot_compute(compute_rows, os.path.join(workdir, "plots", "compute.png")))
    intro = [
        f"Each batch size trained with the rates {tuple(float(v) for v in s.learning_rates)} "
        f"(scaled by the `{s.lr_scaling}` rule from B0={s.base_batch_size}; vmapped in one "
        f"population per batch size) for a budget of {s.budget_epochs:g} epochs clipped to "
        f"[{s.min_budget_steps}, {s.max_budget_steps}] steps, evaluated at least "
        f"{s.evals_per_trial} times"
        + (
            f" and, early on, every {100 * s.resolution:g}% of the steps taken (or every step)"
            if s.resolution > 0
            else ""
        )
        + f". Steps to target: the first evaluation at which {s.metric} {op} {s.target:g}, "
        "minimised over the rates; the crossing lies after the evaluation before it, which "
        "bounds each count (the resolution below). A batch size whose rates all miss the "
        "target within the budget is reported as not reached.",
        "",
        setup_sentence(config, dataset, per_trial),
    ]
    table_cols = [
        "batch_size",
        "reached",
        "steps",
        "steps_low",
        "steps_high",
        "seeds_reached",
        "epochs",
        "examples",
        "learning_rate",
        "lrs_reached",
        "lrs_tried",
        "budget_steps",
        "perfect_scaling_steps",
    ]
    write_report(
        workdir,
        "Steps to target against batch size (Shallue et al. 2018)",
        [
            ("Setup", intro),
            (
                "Measured against the published shape",
                describe_steps(per_size, fit, s.metric, float(s.target), per_trial),
            ),
            ("Results", [markdown.markdown_table(per_size, table_cols)]),
            (
                "Memory and speed per batch size",
                compute_section(compute_rows)
                + engine_section(workdir, [f"bs_{b:04d}" for b in sizes]),
            ),
        ],
        [os.path.relpath(p, workdir) for p in plots],
    )
    return per_size, per_trial, fit


def run_noise_scale(config, workdir: str, dataset: data_lib.Dataset) -> list[dict]:
    """The noise-scale study into ``workdir`` (runs or reuses steps to target beside it)."""
    s, stt = config.noise_scale, config.steps_to_target
    steps_dir = os.path.join(os.path.dirname(workdir), "steps_to_target")
    done = os.path.exists(os.path.join(steps_dir, "steps_to_target.csv")) and all(
        same_run(cfg, os.path.join(steps_dir, f"bs_{b:04d}"))
        for b, cfg in steps_to_target_configs(config, dataset.num_train).items()
    )
    if done:
        per_size, per_trial, fit = collect_steps_to_target(config, steps_dir, dataset)
    else:  # the whole steps-to-target study, with its own outputs and report
        per_size, per_trial, fit = run_steps_to_target(config, steps_dir, dataset)
    rate, momentum = noise_trial(config, per_size, per_trial)
    cfg = noise_config(config, rate, dataset.num_train, momentum)
    check_engine_config(cfg, dataset)
    os.makedirs(workdir, exist_ok=True)
    files.write_config(workdir, config_to_dict(cfg))
    rows = measure_noise_scale(cfg, dataset, s, os.path.join(workdir, "run"))
    files.write_csv(
        os.path.join(workdir, "noise_scale.csv"),
        rows,
        ("learning_rate", "batch_size") + NOISE_COLUMNS,
    )
    at_target = first_reaching(rows, stt.metric, float(stt.target))
    noise = at_target and {
        "b_simple": at_target["b_simple_ema"],
        "b_simple_exact": at_target.get("b_simple_exact_ema"),
    }
    op = ">=" if higher_is_better(stt.metric) else "<="
    plots = [
        plot_steps_to_target(
            per_size,
            per_trial,
            fit,
            os.path.join(workdir, "plots", "steps_to_target_and_noise.png"),
            f"steps to {stt.metric} {op} {stt.target:g}, and B_simple at it",
            noise=noise or None,
        ),
        plot_noise_along_training(
            rows,
            stt.metric,
            float(stt.target),
            os.path.join(workdir, "plots", "noise_scale.png"),
            at_target,
        ),
    ]
    intro = _noise_setup(s, cfg, rows[0]["learning_rate"], os.path.join(workdir, "run"))
    shown = rows[:: max(1, len(rows) // 12)]
    if rows[-1] not in shown:
        shown.append(rows[-1])
    cols = [
        "step",
        "epoch",
        "val_loss",
        "val_accuracy",
        "b_simple",
        "b_simple_ema",
        "b_simple_exact",
        "b_simple_exact_ema",
    ]
    write_report(
        workdir,
        "Gradient noise scale and the critical batch size (McCandlish et al. 2018)",
        [
            ("Setup", intro),
            (
                "Measured against the published shape",
                describe_noise(at_target, rows, fit, per_size, stt.metric, float(stt.target)),
            ),
            (
                "Along training (a sample of the measurements)",
                [markdown.markdown_table(shown, [c for c in cols if c in shown[0]])],
            ),
        ],
        [os.path.relpath(p, workdir) for p in plots],
    )
    return rows


def _noise_setup(s, cfg, rate: float, run_dir: str) -> list[str]:
    """The noise-scale report's setup: the measurement, then the trial's setup paragraph."""
    b, steps = int(s.batch_size), int(cfg.num_steps)
    return noise_intro(s, b, rate, steps) + [
        "",
        report_setup.setup_sentence(
            files.read_config(run_dir) or config_to_dict(cfg),
            [{"seed": cfg.seeds[0], "batch_size": b, "steps": steps}],
            ranked=False,
        ),
    ]


RUNNERS = {
    "fixed_epochs": run_fixed_epochs,
    "steps_to_target": run_steps_to_target,
    "noise_scale": run_noise_scale,
}


def run(config, workdir: str) -> dict[str, str]:
    """Runs ``config.study`` (one of :data:`STUDIES`, or ``all``) into ``workdir/<study>/``.

    Every check runs before anything compiles or touches the workdir; returns study -> report.
    """
    validate_config(config)
    dataset = data_lib.load_dataset(config)
    validate_config(config, dataset.num_train)
    engine_configs(config, dataset)
    reports = {}
    for name in studies(config):
        directory = os.path.join(workdir, name)
        logging.info("batch-size study %s into %s", name, directory)
        RUNNERS[name](config, directory, dataset)
        reports[name] = os.path.join(directory, REPORT)
    return reports
