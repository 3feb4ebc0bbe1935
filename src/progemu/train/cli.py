"""``progemu train``: train ProgEmu (joint) or one half of the ProgEmu² cascade (image / text).

Examples::

    progemu train --data icg --tokenizer tok --out ckpt --preset tiny --epochs 20
    progemu train --data icg --tokenizer tok --out ckpt --resume            # after a crash / SIGKILL
    torchrun --nproc_per_node 4 -m progemu.train.cli --data icg --tokenizer emu3-hf --init emu3-hf \\
        --preset emu3-8b --out ckpt --strategy fsdp --batch-size 64 --micro-batch-size 1 --lr 1e-5

The final checkpoint is OUT itself (``progemu generate --model OUT``); step checkpoints with
the full training state are in ``OUT/checkpoints/``.
"""
from __future__ import annotations

import argparse
import sys

__all__ = ["main", "build_parser", "config_from_args"]

#: prompt dropout when --prompt-dropout is not given: the tiny demo model sees few examples,
#: so 0.1 gives the unconditional branch enough training for classifier-free guidance;
#: larger presets use the official null_prompt_prob 0.01.
DEFAULT_PROMPT_DROPOUT = {"tiny": 0.1}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="progemu train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="curated ICG-CXR dataset directory (progemu curate)")
    parser.add_argument("--tokenizer", required=True, help="image tokenizer directory (progemu tokenizer train, or Emu3 HF)")
    parser.add_argument("--out", required=True, help="output directory: final checkpoint, log.jsonl, checkpoints/")
    parser.add_argument("--preset", default="tiny", help="model shape: tiny | small | base | emu3-8b (default tiny)")
    parser.add_argument("--init", default=None, help="start from a progemu checkpoint or Emu3 weights in Hugging Face format")
    parser.add_argument("--text-tokenizer", default=None, help="text tokenizer directory (default: BPE trained on the data, or --init's)")
    parser.add_argument("--mode", choices=("joint", "image", "text"), default="joint",
                        help="joint = ProgEmu; image / text = the two halves of ProgEmu²")
    parser.add_argument("--split", default="train")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--max-steps", type=int, default=None, help="optimiser steps (overrides --epochs)")
    parser.add_argument("--batch-size", type=int, default=8, help="global batch per optimiser step (all processes)")
    parser.add_argument("--micro-batch-size", type=int, default=None, help="sequences per forward per process (gradient accumulation)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (official 1e-5; tiny default 1e-3)")
    parser.add_argument("--min-lr", type=float, default=None, help="final learning rate of the cosine (default lr / 10)")
    parser.add_argument("--warmup-steps", type=int, default=30)
    parser.add_argument("--schedule-steps", type=int, default=None,
                        help="length of the cosine schedule (default: the run's); larger than the run = stop early on it")
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--clip", type=float, default=5.0, help="gradient-norm clipping")
    parser.add_argument("--loss-on", choices=("target", "all"), default="target",
                        help="target = the paper; all = every token, as the released code")
    parser.add_argument("--visual-loss-weight", type=float, default=1.0,
                        help="weight of image-code labels in the optimised loss (1 = the paper's plain mean; "
                             "the demo uses 0.25 so the irreducible image-code loss does not drown the text)")
    parser.add_argument("--prompt-dropout", type=float, default=None,
                        help="probability of blanking prior image + prompt (CFG); default 0.1 for tiny, else 0.01")
    parser.add_argument("--sentence-shuffle", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=100, help="steps between step checkpoints")
    parser.add_argument("--keep-last", type=int, default=2, help="step checkpoints kept")
    parser.add_argument("--log-every", type=int, default=1)
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in OUT/checkpoints")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--gradient-checkpointing", default="auto", choices=("auto", "on", "off"))
    parser.add_argument("--strategy", default="ddp", choices=("ddp", "fsdp"), help="multi-process strategy under torchrun")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--bpe-vocab-size", type=int, default=None)
    parser.add_argument("--tensorboard", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def config_from_args(args: argparse.Namespace):
    from progemu.train.data import DataConfig
    from progemu.train.optim import OptimConfig
    from progemu.train.trainer import TrainConfig

    lr = args.lr if args.lr is not None else (1e-3 if args.preset == "tiny" else 1e-5)
    optim = OptimConfig(lr=lr, min_lr=args.min_lr if args.min_lr is not None else lr / 10, warmup_steps=args.warmup_steps,
                        schedule_steps=args.schedule_steps, weight_decay=args.weight_decay, clip_grad_norm=args.clip)
    dropout = args.prompt_dropout if args.prompt_dropout is not None else DEFAULT_PROMPT_DROPOUT.get(args.preset, 0.01)
    data = DataConfig(split=args.split, mode=args.mode, loss_on=args.loss_on, visual_loss_weight=args.visual_loss_weight,
                      prompt_dropout=dropout, sentence_shuffle=args.sentence_shuffle)
    return TrainConfig(data=args.data, tokenizer=args.tokenizer, out=args.out, preset=args.preset, init=args.init,
                       text_tokenizer=args.text_tokenizer, bpe_vocab_size=args.bpe_vocab_size, data_config=data, optim=optim,
                       epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
                       micro_batch_size=args.micro_batch_size, seed=args.seed, save_every=args.save_every,
                       keep_last=args.keep_last, log_every=args.log_every, device=args.device, precision=args.precision,
                       gradient_checkpointing=args.gradient_checkpointing, strategy=args.strategy, num_threads=args.threads,
                       tensorboard=args.tensorboard, progress=not args.no_progress, resume=args.resume)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from progemu.model.presets import PRESETS
    from progemu.train.trainer import train

    if args.preset not in PRESETS:
        print(f"progemu train: unknown --preset {args.preset!r}; choose one of {sorted(PRESETS)}", file=sys.stderr)
        return 2
    if not args.visual_loss_weight >= 0:
        print(f"progemu train: --visual-loss-weight must be >= 0, got {args.visual_loss_weight}", file=sys.stderr)
        return 2
    try:
        train(config_from_args(args))
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as error:
        print(f"progemu train: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # torchrun -m progemu.train.cli ...
    sys.exit(main())
