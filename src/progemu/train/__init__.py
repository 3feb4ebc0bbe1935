"""ProgEmu training: data, objective, optimisation, distribution, the loop and ``progemu train``.

Nothing is imported here; use ``progemu.train.trainer.train`` or ``progemu.train.cli.main``.
"""
