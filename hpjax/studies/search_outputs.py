"""What a search writes: ``search.csv``, ``plots/search.png`` and ``search_report.md`` for one
worker's trials, and the whole study gathered from its storage and its workers' workdirs.

Each worker's workdir holds ``worker.json`` (its name in the storage, the study and the search's
setup), one ``round_NNN/`` study per round it trained, and the outputs of the trials it trained.
:func:`gather` joins the workers: one row per trial the study finished, the report over all of
them, and the best trial's checkpoint copied to ``OUT/best/`` (``hpjax.restore_best``).
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

from hpjax.config import as_tuple
from hpjax.errors import ConfigError
from hpjax.report import figures, markdown
from hpjax.results import checkpoints, files, optuna_shared

try:
    import optuna
except ImportError:
    optuna = None


def flat_space(space) -> dict[str, Any]:
    """The search space with the nested ``model`` section as ``model.KEY`` entries."""
    space = space.to_dict() if hasattr(space, "to_dict") else dict(space)
    model = space.pop("model", None) or {}
    return space | {f"model.{k}": v for k, v in dict(model).items()}


def setup(config) -> dict:
    """The search's settings its reports name (kept in each worker's ``worker.json``)."""
    s = config.search
    return {
        "sampler": str(s.sampler),
        "population": int(s.population),
        "num_trials": int(s.num_trials),
        "objectives": list(as_tuple(s.objectives)),
        "space": {k: list(as_tuple(v)) for k, v in flat_space(s.space).items()},
    }


def read_worker(workdir: str) -> dict:
    return files.read_json_file(
        os.path.join(workdir, "worker.json"),
        "the search worker's record",
        "is it a search workdir?",
    )


def _with_best_so_far(rows: list[dict]) -> list[dict]:
    best_so_far = math.inf
    for row in sorted(rows, key=lambda r: r["number"]):
        loss = row.get("best_val_loss")
        if row.get("status") != "diverged" and loss is not None and math.isfinite(loss):
            best_so_far = min(best_so_far, loss)
        row["best_so_far"] = best_so_far if math.isfinite(best_so_far) else None
    return rows


def _study_line(info: Mapping, study, trained: int) -> str:
    told = [t for t in study.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "PRUNED")]
    workers = {t.user_attrs.get(optuna_shared.WORKER) for t in told} - {None}
    where = info["storage"]
    line = f"The Optuna study `{info['study_name']}` in `{where}` (`optuna-dashboard {where}`)"
    if info["worker"] == "gathered":
        line += f" holds {len(told)} finished trials from {len(workers)} worker(s), all here"
    elif len(workers) > 1:
        line += (
            f" holds {len(told)} finished trials from {len(workers)} workers; this workdir "
            f"trained {trained} of them (all of them: `python tools/gather_search.py "
            f"--storage URL --study_name {info['study_name']} --workdirs W1,W2,... --out DIR`)"
        )
    return line + "."


def write_outputs(
    workdir: str, study, rows: list[dict], wall_s: float, extra_columns: Sequence[str] = ()
) -> dict[str, str]:
    """``search.csv``, ``plots/search.png`` and ``search_report.md`` of ``rows`` in ``workdir``."""
    info = read_worker(workdir)
    s = info["search"]
    rows = _with_best_so_far(rows)
    space = list(s["space"])
    columns = ["number", "round", *extra_columns, *space, "status", "best_val_loss"]
    columns += ["best_so_far", "best_step"]
    columns += [c for c in ("test_loss", "test_accuracy", "num_params") if rows and c in rows[0]]
    paths = {"csv": os.path.join(workdir, "search.csv")}
    files.write_csv(paths["csv"], sorted(rows, key=lambda r: r["number"]), columns)
    pareto = []
    if len(s["objectives"]) > 1:
        front = {t.number for t in study.best_trials}
        pareto = [r for r in rows if r["number"] in front]
    paths["plot"] = plot_search(rows, pareto, os.path.join(workdir, "plots", "search.png"))
    ok = [r for r in rows if r.get("best_so_far") is not None and r["status"] != "diverged"]
    best = min(ok, key=lambda r: r["best_val_loss"]) if ok else None
    lines = [
        f"# Search: {s['sampler']}, {len(rows)} trials in populations of {s['population']}",
        "",
        f"{len(rows)} trials asked of Optuna's `{s['sampler']}` {s['population']} at a time, "
        f"each batch trained as one hpjax study (`round_NNN/`), in {wall_s:.1f} s. Space: "
        + ", ".join(f"`{k}` {tuple(v)}" for k, v in s["space"].items())
        + ". "
        + _study_line(info, study, len(rows)),
        "",
    ]
    if best is not None:
        lines += [
            f"**Best trial:** number {best['number']} (round {best['round']}"
            + (f", {best['worker']}" if "worker" in best else "")
            + "): "
            + ", ".join(f"{k}={best.get(k)}" for k in space)
            + f": best validation loss {best['best_val_loss']:.4g}"
            + (f", test accuracy {best['test_accuracy']:.4g}" if "test_accuracy" in best else "")
            + ".",
            "",
        ]
    if pareto:
        lines += [
            "## Pareto front (validation loss against parameter count)",
            "",
            markdown.markdown_table(sorted(pareto, key=lambda r: r["num_params"]), columns),
        ]
    top = sorted(ok, key=lambda r: r["best_val_loss"])[:10]
    lines += ["## The ten best trials", "", markdown.markdown_table(top, columns)]
    lines += ["## Plot", "", "![search](plots/search.png)", ""]
    paths["report"] = files.write_markdown(os.path.join(workdir, "search_report.md"), lines)
    return paths


def plot_search(rows, pareto, path: str) -> str:
    """Left: each trial's best validation loss and the best so far, in the order asked. Right,
    with two objectives: validation loss against parameter count, the Pareto front joined."""
    fig = figures.new_figure((12.0, 4.8) if pareto else (8.0, 5.0))
    axes = fig.subplots(1, 2) if pareto else [fig.add_subplot()]
    ordered = sorted(rows, key=lambda r: r["number"])
    ax = axes[0]
    xs = [r["number"] for r in ordered if r.get("best_so_far") is not None]
    ok = [r for r in ordered if r["status"] != "diverged" and r.get("best_so_far") is not None]
    ax.scatter([r["number"] for r in ok], [r["best_val_loss"] for r in ok], s=12, label="trial")
    ax.step(
        xs,
        [r["best_so_far"] for r in ordered if r.get("best_so_far") is not None],
        where="post",
        color="black",
        label="best so far",
    )
    ax.set_xlabel("trial (order asked)")
    ax.set_ylabel("best validation loss")

    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    if pareto:
        ax = axes[1]
        ax.scatter(
            [r["num_params"] for r in ok],
            [r["best_val_loss"] for r in ok],
            s=12,
            color="grey",
            label="trial",
        )
        front = sorted(pareto, key=lambda r: r["num_params"])
        ax.plot(
            [r["num_params"] for r in front],
            [r["best_val_loss"] for r in front],
            "o-",
            color="C3",
            label="Pareto front",
        )
        figures.log_scale(ax, "x")

        ax.set_xlabel("parameters")
        ax.set_ylabel("best validation loss")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    return figures.save_figure(fig, path)


def worker_rows(workdir: str) -> list[dict]:
    """The rows of the trials a worker's rounds trained (from each round's ``asked.json`` and
    ``summary.csv``); a round killed before its summary has none."""
    rows = []
    for name in sorted(os.listdir(workdir)):
        round_dir = os.path.join(workdir, name)
        asked_path = os.path.join(round_dir, "asked.json")
        if not name.startswith("round_") or not os.path.exists(asked_path):
            continue
        try:
            summary = {int(r["trial"]): r for r in files.read_summary(round_dir)}
        except (OSError, ValueError):
            continue
        asked = files.read_json_file(asked_path, "the trials a search round asked")
        for index, entry in enumerate(asked):
            if index in summary:
                row = {"round": int(name.split("_")[1]), "number": entry["number"]}
                rows.append(row | entry["params"] | summary[index] | {"workdir": workdir})
    return rows


def _storage_row(trial) -> dict:
    """A finished trial whose worker's workdir was not given: what the storage knows."""
    status = {"PRUNED": "pruned", "FAIL": "diverged"}.get(trial.state.name, "complete")
    loss = trial.values[0] if trial.values and status == "complete" else None
    return {"number": trial.number, "round": None, "status": status, "best_val_loss": loss}


def gather(url: str, study_name: str, workdirs: Sequence[str], out: str) -> dict[str, str]:
    """Writes the study ``study_name`` at ``url`` as one search into ``out``: a row per trial it
    finished (told by its worker; a trial lost with its worker is there once, as its retry),
    with the details from the workers' ``workdirs``, the report and plot, and the best trial's
    checkpoint in ``out/best/``. Returns the paths written."""
    if not workdirs:
        raise ConfigError("gather needs the workers' workdirs (--workdirs W1,W2,...)")
    infos = {w: read_worker(w) for w in workdirs}
    study = optuna.load_study(study_name=study_name, storage=optuna_shared.open_storage(url))
    every = study.get_trials(deepcopy=False)
    retried = optuna_shared.retried_numbers(every)
    told = {
        t.number: t
        for t in every
        if t.state.is_finished()
        and t.user_attrs.get(optuna_shared.TOLD)
        and not optuna_shared.lost(t, retried)
    }
    rows = {}
    for workdir, info in infos.items():
        for row in worker_rows(workdir):
            trial = told.get(row["number"])
            if trial is not None and trial.user_attrs.get(optuna_shared.WORKER) == info["worker"]:
                rows[row["number"]] = row | {"worker": os.path.basename(os.path.abspath(workdir))}
    for number, trial in told.items():
        if number not in rows:
            rows[number] = _storage_row(trial) | trial.params | {"worker": "(not given)"}
    os.makedirs(out, exist_ok=True)
    first = next(iter(infos.values()))
    files.write_json(os.path.join(out, "worker.json"), first | {"worker": "gathered"})
    times = [t.datetime_start for t in told.values() if t.datetime_start] + [
        t.datetime_complete for t in told.values() if t.datetime_complete
    ]
    wall = (max(times) - min(times)).total_seconds() if times else 0.0
    paths = write_outputs(out, study, list(rows.values()), wall, extra_columns=("worker",))
    paths |= _copy_best(list(rows.values()), out)
    return paths


def _copy_best(rows: list[dict], out: str) -> dict[str, str]:
    """The best trial's population checkpoint, copied to ``out/best/`` with ``best.json``."""
    ok = [r for r in rows if r.get("workdir") and r["status"] != "diverged" and r["best_val_loss"]]
    if not ok:
        return {}
    best = min(ok, key=lambda r: r["best_val_loss"])
    round_dir = os.path.join(best["workdir"], f"round_{best['round']:03d}")
    directory, _, _ = checkpoints.find_best(round_dir, int(best["trial"]))
    target = os.path.join(out, "best", "checkpoints", os.path.basename(directory))
    if os.path.exists(target):
        shutil.rmtree(target)
    shutil.copytree(directory, target)
    record = {k: best[k] for k in ("number", "worker", "round", "trial", "best_val_loss")}
    record["restore"] = f"hpjax.restore_best({os.path.join(out, 'best')!r}, trial={best['trial']})"
    path = os.path.join(out, "best.json")
    files.write_json(path, record)
    return {"best": path}
