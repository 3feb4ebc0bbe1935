"""``progemu train``: train ProgEmu (joint) or one half of the ProgEmu² cascade (image / text).

Examples::

    progemu train --data icg --tokenizer tok --out ckpt --preset tiny --epochs 20
    progemu train --data icg --tokenizer tok --out ckpt --resume            # after a crash / SIGKILL
    progemu train --data icg --tokenizer tok --out ckpt --preset base --recipe official --pairs-list train.json
    torchrun --nproc_per_node 4 -m progemu.train.cli --data icg --tokenizer emu3-hf --init emu3-hf \\
        --preset emu3-8b --out ckpt --strategy fsdp --batch-size 64 --micro-batch-size 1 --lr 1e-5

The final checkpoint is OUT itself (``progemu generate --model OUT``); step checkpoints with
the full training state are in ``OUT/checkpoints/``.
"""
from __future__ import annotations

import argparse
import sys

from progemu.utils.checks import ArgumentParser, HelpFormatter, float_range, nonneg_int, positive_int

__all__ = ["main", "build_parser", "config_from_args"]

#: prompt dropout when --prompt-dropout is not given: the tiny demo model sees few examples,
#: so 0.1 gives the unconditional branch enough training for classifier-free guidance;
#: larger presets use the official null_prompt_prob 0.01.
DEFAULT_PROMPT_DROPOUT = {"tiny": 0.1}

#: ``--recipe``: defaults for the flags a command line leaves out. ``official`` = the released code's
#: scripts/init.sh and dataset class (null_prompt_prob 0.01, shuffle_sentence_prob 0.05,
#: dropneg_sentence_prob 0.05, loss on every token, lr 1e-5 cosine to 1e-6, 30 warm-up steps, weight
#: decay 0.1, clipping 5, 30 epochs), the paper's sequential positions and none of progemu's additions.
RECIPES: dict[str, dict] = {
    "progemu": {},
    "official": {"prompt_dropout": 0.01, "prompt_shuffle": 0.05, "drop_negative": 0.05, "sentence_shuffle": 0.0,
                 "loss_on": "all", "visual_loss_weight": 1.0, "lr": 1e-5, "min_lr": 1e-6, "warmup_steps": 30,
                 "weight_decay": 0.1, "clip": 5.0, "epochs": 30, "positions": "sequential", "identity_pairs": 0.0,
                 "prompt_only_dropout": 0.0},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` with the chosen ``--recipe``'s defaults (explicit flags still win)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", choices=tuple(RECIPES), default="progemu")
    recipe = pre.parse_known_args(argv)[0].recipe
    parser = build_parser()
    known = {action.dest for action in parser._actions}
    parser.set_defaults(**{k: v for k, v in RECIPES[recipe].items() if k in known})
    return parser.parse_args(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="progemu train", description=__doc__.split("\n\n")[0],
                            formatter_class=HelpFormatter)
    parser.add_argument("--data", required=True, help="curated ICG-CXR dataset directory (progemu curate)")
    parser.add_argument("--tokenizer", required=True, help="image tokenizer directory (progemu tokenizer train, or Emu3 HF)")
    parser.add_argument("--out", required=True, help="output directory: final checkpoint, log.jsonl, checkpoints/")
    parser.add_argument("--preset", default="tiny", help="model shape: tiny | small | base | emu3-8b (default tiny)")
    parser.add_argument("--init", default=None, help="start from a progemu checkpoint or Emu3 weights in Hugging Face format")
    parser.add_argument("--text-tokenizer", default=None, help="text tokenizer directory (default: BPE trained on the data, or --init's)")
    parser.add_argument("--mode", choices=("joint", "image", "text"), default="joint",
                        help="joint = ProgEmu; image / text = the two halves of ProgEmu²")
    parser.add_argument("--split", default="train", help="split of --data to train on")
    parser.add_argument("--epochs", type=positive_int, default=30, help="passes over the split (unless --max-steps)")
    parser.add_argument("--max-steps", type=positive_int, default=None,
                        help="optimiser steps, >= 1 (overrides --epochs; default: --epochs worth)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="global batch per optimiser step (all processes)")
    parser.add_argument("--micro-batch-size", type=positive_int, default=None,
                        help="sequences per forward per process (gradient accumulation; default: the whole batch)")
    parser.add_argument("--lr", type=float_range(0, min_open=True), default=None,
                        help="peak learning rate (default: official 1e-5; tiny 1e-3)")
    parser.add_argument("--min-lr", type=float_range(0), default=None, help="final learning rate of the cosine (default lr / 10)")
    parser.add_argument("--warmup-steps", type=nonneg_int, default=30, help="linear warm-up steps (0 = none)")
    parser.add_argument("--schedule-steps", type=positive_int, default=None,
                        help="length of the cosine schedule (default: the run's); larger than the run = stop early on it")
    parser.add_argument("--weight-decay", type=float_range(0), default=0.1, help="AdamW weight decay")
    parser.add_argument("--clip", type=float_range(0, min_open=True), default=5.0, help="gradient-norm clipping threshold")
    parser.add_argument("--loss-on", choices=("target", "all"), default="target",
                        help="target = the paper; all = every token, as the released code")
    parser.add_argument("--visual-loss-weight", type=float_range(0), default=1.0,
                        help="weight of image-code labels in the optimised loss (1 = the paper's plain mean; "
                             "the demo uses 0.25 so the irreducible image-code loss does not drown the text)")
    parser.add_argument("--prompt-dropout", type=float_range(0, 1, max_open=True), default=None,
                        help="probability of blanking prior image + prompt (CFG); default 0.1 for tiny, else 0.01")
    parser.add_argument("--prompt-shuffle", type=float_range(0, 1), default=0.05,
                        help="probability of shuffling the prompt's sentences (official augmentation, default 0.05)")
    parser.add_argument("--drop-negative", type=float_range(0, 1), default=0.05,
                        help="probability of dropping one 'No / Unchanged / Persistent ...' sentence of the prompt, "
                             "never the last (official augmentation, default 0.05)")
    parser.add_argument("--sentence-shuffle", type=float_range(0, 1), default=0.0,
                        help="probability of shuffling the interpretation's sentences (progemu's option, not the "
                             "official code's; default 0)")
    parser.add_argument("--pairs-list", default=None,
                        help="JSON list of pair JSON paths to train on, like the official --data_path (replaces --split)")
    parser.add_argument("--recipe", choices=tuple(RECIPES), default="progemu",
                        help="official = the released training script's settings for every flag not given "
                             "(docs/paper.md); recorded in train_config.json")
    parser.add_argument("--positions", choices=("sequential", "aligned"), default="sequential",
                        help="sequential = the paper's positions (converted official weights); aligned = follow-up cell (i, j) "
                             "at a fixed offset from prior cell (i, j), whatever the prompt's length (default sequential)")
    parser.add_argument("--prompt-budget", type=int, default=128,
                        help="aligned positions: prompt tokens that fit before the follow-up image (default 128)")
    parser.add_argument("--identity-pairs", type=float, default=0.0,
                        help="probability that an example becomes prior -> prior with a 'no change' prompt (default 0)")
    parser.add_argument("--prompt-only-dropout", type=float_range(0, 1, max_open=True), default=0.0,
                        help="probability of removing only the prompt, keeping the prior image: trains the prior-only "
                             "branch of dual guidance (generate --cfg-prompt-scale); default 0")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and dropout")
    parser.add_argument("--save-every", type=positive_int, default=100, help="steps between step checkpoints")
    parser.add_argument("--keep-last", type=positive_int, default=2, help="step checkpoints kept")
    parser.add_argument("--log-every", type=positive_int, default=1, help="steps between log.jsonl lines")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in OUT/checkpoints")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto = CUDA when available")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"), help="auto = bf16 on CUDA, else fp32")
    parser.add_argument("--gradient-checkpointing", default="auto", choices=("auto", "on", "off"),
                        help="auto = on for CUDA")
    parser.add_argument("--strategy", default="ddp", choices=("ddp", "fsdp"), help="multi-process strategy under torchrun")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--bpe-vocab-size", type=positive_int, default=None,
                        help="vocabulary of the BPE text tokenizer trained on the data (default: the preset's)")
    parser.add_argument("--tensorboard", action="store_true", help="also log to OUT/tensorboard")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
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
                      prompt_dropout=dropout, sentence_shuffle=args.sentence_shuffle, identity_pairs=args.identity_pairs,
                      prompt_only_dropout=args.prompt_only_dropout, prompt_shuffle=args.prompt_shuffle,
                      drop_negative=args.drop_negative, pairs_list=args.pairs_list)
    return TrainConfig(recipe=args.recipe, data=args.data, tokenizer=args.tokenizer, out=args.out, preset=args.preset, init=args.init,
                       text_tokenizer=args.text_tokenizer, bpe_vocab_size=args.bpe_vocab_size, data_config=data, optim=optim,
                       positions=args.positions, prompt_budget=args.prompt_budget,
                       epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
                       micro_batch_size=args.micro_batch_size, seed=args.seed, save_every=args.save_every,
                       keep_last=args.keep_last, log_every=args.log_every, device=args.device, precision=args.precision,
                       gradient_checkpointing=args.gradient_checkpointing, strategy=args.strategy, num_threads=args.threads,
                       tensorboard=args.tensorboard, progress=not args.no_progress, resume=args.resume)


#: settings that define the model a resumed run continues: changing them on --resume would keep the old
#: model under a new label, so they are refused (other changes are logged by the trainer as a warning)
RESUME_FIXED = {"preset": "--preset", "data_config.mode": "--mode", "positions": "--positions",
                "prompt_budget": "--prompt-budget", "bpe_vocab_size": "--bpe-vocab-size", "init": "--init",
                "text_tokenizer": "--text-tokenizer"}


#: OUT/INPUTS_NAME: content hashes of the dataset manifest and the image tokenizer a run started with
INPUTS_NAME = "train_inputs.json"


def input_identity(args: argparse.Namespace) -> dict:
    """What the run trains on: the dataset's manifest hash and the image tokenizer's content hash."""
    from pathlib import Path

    from progemu.utils.identity import checkpoint_identity, dataset_identity

    tokenizer = Path(args.tokenizer)
    return {"data": dataset_identity(args.data) if Path(args.data).is_dir() else None,
            "tokenizer": checkpoint_identity(tokenizer) if tokenizer.is_dir() else str(args.tokenizer)}


def check_resume(args: argparse.Namespace) -> None:
    """``--resume`` continues the run in OUT with the model and inputs it started with: refuse a changed
    model definition, dataset or image tokenizer; a fresh run records its inputs."""
    from pathlib import Path

    from progemu.utils.config import config_to_dict
    from progemu.utils.identity import StaleOutputError, differences, flatten, read_identity, write_identity

    out = Path(args.out)
    saved = read_identity(out / "train_config.json")
    inputs = input_identity(args)
    if not args.resume or saved is None:
        if saved is None and not (out / "progemu.json").exists():
            write_identity(out / INPUTS_NAME, inputs)
        return
    old, new = flatten(saved), flatten(config_to_dict(config_from_args(args)))
    keys = [k for k in RESUME_FIXED if k in old]
    found = differences({k: old[k] for k in keys}, {k: new.get(k) for k in keys}, names=RESUME_FIXED)
    recorded = read_identity(out / INPUTS_NAME)
    if recorded is not None:
        found += differences(recorded, inputs, names={"data": "--data (its manifest.jsonl)",
                                                      "tokenizer": "--tokenizer (its weights)"})
    if found:
        raise StaleOutputError(f"--out {args.out}: --resume continues the run started there, which was made with "
                               f"{', '.join(found)}; resume with the same settings, or train afresh with a new --out")


def main(argv: list[str] | None = None) -> int:
    from progemu.utils.extras import prepare_command

    prepare_command("train", sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    from progemu.model.presets import PRESETS
    from progemu.train.trainer import train

    if args.preset not in PRESETS:
        print(f"progemu train: unknown --preset {args.preset!r}; choose one of {sorted(PRESETS)}", file=sys.stderr)
        return 2
    if not args.visual_loss_weight >= 0:
        print(f"progemu train: --visual-loss-weight must be >= 0, got {args.visual_loss_weight}", file=sys.stderr)
        return 2
    if not 0 <= args.identity_pairs < 1:
        print(f"progemu train: --identity-pairs must be in [0, 1), got {args.identity_pairs}", file=sys.stderr)
        return 2
    if args.prompt_budget < 1:
        print(f"progemu train: --prompt-budget must be >= 1, got {args.prompt_budget}", file=sys.stderr)
        return 2
    from progemu.utils.checks import UsageError, check_device, check_out_dir
    from progemu.utils.identity import StaleOutputError
    from progemu.utils.lock import OutputLockedError, output_lock

    try:
        check_device(args.device)
        check_out_dir(args.out)
        with output_lock(args.out, "progemu train"):
            try:
                check_resume(args)
            except StaleOutputError as error:  # a conflict with the run in OUT, like "already holds a run": exit 1
                print(f"progemu train: {error}", file=sys.stderr)
                return 1
            train(config_from_args(args))
    except UsageError as error:
        print(f"progemu train: {error}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, OutputLockedError) as error:
        print(f"progemu train: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # torchrun -m progemu.train.cli ...
    sys.exit(main())
