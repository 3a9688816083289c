"""Process-wide JAX settings a binary takes from its config before JAX starts its backend.

- ``config.cpu_devices``: how many devices the host CPU is split into (1, the default and JAX's
  own; 0 = one per core this process may use). With ``num_devices=0`` a population's trials
  are sharded over them, so each core runs its share of the trials as a program of its own.
  That pays for small models, whose operations are too small to keep two cores busy within
  one program: on 2 cores 8 GRUs of 32 units trained 1.7x faster and 8 MLPs of 256 units
  1.2x. It costs large ones, whose matmuls already use every core: 2 MLPs of 3 x 1024 units
  took 122 s instead of 53 s. Trials differ from a one-device run by float rounding only.
- ``config.compilation_cache``: a directory for JAX's persistent compilation cache ("" = off),
  so running a study again with the same shapes (other rates, seeds, a resume) loads its
  programs instead of compiling them. It keeps at most 1 GiB, dropping the least recently
  used programs. Its subdirectory ``hpjax-programs`` keeps the engine's programs as traced
  (:mod:`hpjax.engine.program_cache`), so such a rerun does not trace them either.

``cpu_devices`` must be set before the first JAX computation; :func:`configure` refuses with a
one-line error naming the key when it is too late.
"""

from __future__ import annotations

import os

import jax

from hpjax.engine import program_cache
from hpjax.errors import ConfigError
from hpjax.study.sections import ProcessSpec

# Programs that compile faster than this are not worth a file read (nor a cache entry).
MIN_CACHED_COMPILE_S = 0.1
MAX_CACHE_BYTES = 2**30  # beyond it, JAX evicts the least recently used programs
PROGRAMS = "hpjax-programs"  # the subdirectory of hpjax.engine.program_cache


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure(process: ProcessSpec) -> None:
    """Applies ``cpu_devices`` and ``compilation_cache`` to this process."""
    cpu_devices, cache = process.cpu_devices, process.compilation_cache
    count = cpu_devices or usable_cores()
    forced = "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
    if count != 1 and not (cpu_devices == 0 and forced):  # an explicit XLA flag wins over 0
        try:
            jax.config.update("jax_num_cpu_devices", count)
        except RuntimeError as error:
            raise ConfigError(
                f"config.cpu_devices={cpu_devices}: JAX has already started its backend in this "
                "process; set it before the first JAX computation (the binaries do)"
            ) from error
    use_compilation_cache(cache)


def use_compilation_cache(directory: str) -> None:
    """Points JAX's persistent compilation cache at ``directory`` ("" = off), unless this process
    chose its own (``JAX_COMPILATION_CACHE_DIR`` or ``jax.config``), which wins.

    JAX decides at a process's first compilation whether it uses the cache: set later, in a
    process that has already compiled something, it has no effect (and does no harm).
    """
    if not directory:
        return
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
    # hpjax's traced programs beside JAX's executables (JAX's eviction reads only its own files)
    program_cache.use_directory(os.path.join(jax.config.jax_compilation_cache_dir, PROGRAMS))
    if jax.config.jax_compilation_cache_dir != os.path.expanduser(directory):
        return
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:  # the user's wins
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_CACHED_COMPILE_S)
    jax.config.update("jax_compilation_cache_max_size", MAX_CACHE_BYTES)
