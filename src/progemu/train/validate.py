"""Teacher-forced held-out loss of a checkpoint, with and without the condition.

``heldout_loss`` scores the true follow-up image and interpretation of each pair given
(a) the conditional prefix ``BOS IMG(prior) prompt`` and (b) the null prefix ``BOS`` used for
prompt dropout / classifier-free guidance. (a) < (b) means the model uses the prior and the
prompt; a finite, trained (b) is what CFG's unconditional branch needs.

Command::

    python -m progemu.train.validate --model CKPT --data DATA [--split test]
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

import torch

__all__ = ["heldout_loss", "main"]


@torch.no_grad()
def heldout_loss(loaded, pairs: Sequence[Any], codes: dict, *, batch_size: int = 4) -> dict:
    """Per-token CE (nats) on ``pairs`` for the conditional and the null prefix.

    ``loaded``: :class:`progemu.model.checkpoint.LoadedCheckpoint`; ``codes``: image path ->
    int [h, w] (``progemu.train.data.load_codes``). Returns ``{"conditional": {"loss",
    "loss_image", "loss_text"}, "null": {...}, "pairs": N}``.
    """
    from progemu.train.data import DataConfig, ProgEmuExamples, collate
    from progemu.train.objective import TargetLoss

    model = loaded.model.eval()
    device = next(model.parameters()).device
    layout = loaded.layout
    wrapped = TargetLoss(model, layout.visual_offset, layout.codebook_size)
    result: dict = {"pairs": len(pairs)}
    for name, dropout in (("conditional", 0.0), ("null", 1.0)):
        config = DataConfig(split="", mode=loaded.mode, prompt_dropout=dropout, sentence_shuffle=0.0,
                            prompt_shuffle=0.0, drop_negative=0.0)
        examples = ProgEmuExamples(pairs, codes, loaded.text_tokenizer, layout, config)
        sums = torch.zeros(5, dtype=torch.float64)
        for start in range(0, len(examples), batch_size):
            batch = collate([examples.example(i, 0) for i in range(start, min(start + batch_size, len(examples)))], layout.pad_id, layout)
            sums += wrapped(**{k: v.to(device) for k, v in batch.items()}).to("cpu", torch.float64)
        text = sums[1] - sums[3]
        result[name] = {"loss": float(sums[0] / sums[1]),
                        "loss_image": float(sums[2] / sums[3]) if sums[3] > 0 else None,
                        "loss_text": float((sums[0] - sums[2]) / text) if text > 0 else None}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m progemu.train.validate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="progemu checkpoint directory")
    parser.add_argument("--data", required=True, help="curated dataset")
    parser.add_argument("--split", default="test")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from progemu.data.icgcxr import load_pairs
    from progemu.model.checkpoint import load_checkpoint
    from progemu.train.data import load_codes

    loaded = load_checkpoint(args.model)
    pairs = load_pairs(args.data, split=args.split)
    codes = load_codes(args.data, pairs, loaded.image_tokenizer, progress=False)
    print(json.dumps(heldout_loss(loaded, pairs, codes), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
