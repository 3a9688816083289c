"""The study floor, between the binaries and the engine, in the order data flows through it.

- :mod:`~hpjax.study.spec`: parse once: a ``ConfigDict`` becomes a frozen, typed study spec;
- :mod:`~hpjax.study.space` and :mod:`~hpjax.study.trials`: one way to name trials (points of a
  space drawn by a sampler);
- :mod:`~hpjax.study.populations`: which trials share a compiled program, and its plan;
- :mod:`~hpjax.study.loop`, :mod:`~hpjax.study.rows`, :mod:`~hpjax.study.schedulers`: the one
  host loop, its row policy and its schedulers (ASHA, PBT);
- :mod:`~hpjax.study.waves`: a study extended with more trials;
- :mod:`~hpjax.study.run`: the entry of every study, from a config to a workdir of results.
"""
