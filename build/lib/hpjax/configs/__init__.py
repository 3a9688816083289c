"""The experiment programs' config files (ml_collections): one per program or recipe, each a
``get_config(variants)`` starting from :func:`hpjax.config.default_config`.

They ship inside the package, so the installed ``hpjax`` command has them; the files under
``experiments/configs/`` re-export them for ``--config=experiments/configs/NAME.py:VARIANT``.
"""
