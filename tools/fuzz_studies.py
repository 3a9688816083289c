"""The long profile of the generated study-space test: ``--examples`` studies drawn by
Hypothesis from everything ``tests/study_fuzz.py`` combines, each held to every oracle (axes in
``summary.csv``, each trial against the trial alone, ``restore_best`` against the summary, a
kill and a rerun against the uninterrupted run).

  python tools/fuzz_studies.py --examples 300           # or as many as fit in --minutes
  python tools/fuzz_studies.py --examples 20 --seed 7   # another draw
  python tools/fuzz_studies.py --examples 20 --cpu_devices 4  # trials sharded over 1, 2, 4

Prints a line per study (seconds, outcome, the study), then the count of studies trained,
refused and failed; on a failure Hypothesis shrinks it to the smallest failing study, which is
printed last (exit 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if "--cpu_devices" in sys.argv:  # before JAX starts: the host CPU as that many devices
    count = sys.argv[sys.argv.index("--cpu_devices") + 1]
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={count}"
    )

import jax  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import seed as hypothesis_seed  # noqa: E402

from tests import study_fuzz  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=300)
    parser.add_argument("--minutes", type=float, default=30.0, help="stop drawing after this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cpu_devices", type=int, default=1, help="draw placements over this many CPU devices"
    )
    args = parser.parse_args(argv)
    counts = {"trained": 0, "refused": 0}
    start = time.perf_counter()
    scratch = tempfile.mkdtemp(prefix="hpjax_fuzz_")

    @hypothesis_seed(args.seed)
    @settings(
        max_examples=args.examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(study_fuzz.studies())
    def one_study(study):
        if time.perf_counter() - start > 60 * args.minutes:
            return  # out of time: the rest pass without running
        began = time.perf_counter()
        try:
            outcome = study_fuzz.check_study(study, scratch)
        finally:  # one process holding every study's programs runs out of memory maps
            jax.clear_caches()
        counts[outcome.split(":")[0]] += 1
        print(
            f"{time.perf_counter() - began:6.1f}s {outcome[:120]} {json.dumps(study)}", flush=True
        )

    failed = 0
    try:
        one_study()
    except Exception as error:  # noqa: BLE001 (Hypothesis re-raises the shrunk failure)
        failed = 1
        print(f"failure (shrunk, as Hypothesis printed above): {type(error).__name__}: {error}")
    minutes = (time.perf_counter() - start) / 60
    print(
        f"studies: {counts['trained']} trained, {counts['refused']} refused in one line, "
        f"{failed} failed, in {minutes:.1f} min (seed {args.seed})"
    )
    return failed


if __name__ == "__main__":
    sys.exit(main())
