"""ProgEmu model pieces: token layout, text tokenizer, presets and checkpoints.

Nothing is imported here, so ``import progemu.model.layout`` stays light (numpy only).
"""
