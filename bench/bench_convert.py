"""Benchmark of ``progemu convert``: time and peak resident memory on a model of Emu3-Gen's width.

The source is written here in BAAI's format with random weights: the ``emu3-8b`` preset's shape
(hidden 4096, MLP 14336, 32 heads / 8 KV heads, vocabulary 184,622) with ``--layers`` decoder layers
in ``--dtype`` (sharded safetensors + index, BAAI config), BAAI/Emu3-VisionTokenizer's real
architecture (271 M parameters, float32, 1x1-convolution attention) and a tiktoken vocabulary of
Emu3's size (151,643 ranks, every token the merge of two lower-ranked ones) plus the 33 k special
and visual tokens. Each conversion is the real command (``python -m progemu.cli convert``) in a
child process; its peak resident memory is the child's ``ru_maxrss`` (``os.wait4``).

Runs: cold (the source files evicted from the page cache with ``posix_fadvise(DONTNEED)``, so they
are read from disk) with and without SHA-256 hashing, and warm (the source still cached). Two
references on the same files: a cold sequential read, and a cold byte-for-byte copy with fsync
(the best any converter that writes a full copy can do on this disk). Python + torch + transformers
imported alone give the fixed memory floor.

    OMP_NUM_THREADS=1 python bench/bench_convert.py --layers 2 --out bench/results/convert.md
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # convert_fixtures: BAAI key names of the vision tokenizer

EMU3_VQ = {"architectures": ["Emu3VisionVQModel"], "attn_resolutions": [3], "ch": 256, "ch_mult": [1, 2, 2, 4],
           "codebook_size": 32768, "double_z": False, "dropout": 0.0, "embed_dim": 4, "in_channels": 3,
           "model_type": "Emu3VisionVQ", "num_res_blocks": 2, "out_channels": 3, "temporal_downsample_factor": 4,
           "z_channels": 4}


def _fill(shape, dtype, block):
    """A tensor of ``shape`` tiled from a random block (cheap to make; conversion never looks at values)."""
    import math

    import torch

    count = math.prod(shape)
    reps = -(-count // block.numel())
    return block.to(dtype).repeat(reps)[:count].reshape(shape).clone() if count else torch.zeros(shape, dtype=dtype)


def write_lm(directory: Path, layers: int, dtype_name: str, shard_gb: float) -> int:
    import torch
    from safetensors.torch import save_file

    dtype = getattr(torch, dtype_name)
    hidden, inter, vocab, heads, kv = 4096, 14336, 184622, 32, 8
    kv_dim = kv * hidden // heads
    shapes = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (kv_dim, hidden),
                       p + "self_attn.v_proj.weight": (kv_dim, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
                       p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                       p + "mlp.down_proj.weight": (hidden, inter), p + "input_layernorm.weight": (hidden,),
                       p + "post_attention_layernorm.weight": (hidden,)})
    shapes.update({"model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)})
    size = torch.tensor([], dtype=dtype).element_size()
    groups, current, used = [], [], 0
    for name, shape in shapes.items():
        nbytes = size * (shape[0] * (shape[1] if len(shape) > 1 else 1))
        if current and used + nbytes > shard_gb * 1e9:
            groups.append(current)
            current, used = [], 0
        current.append(name)
        used += nbytes
    groups.append(current)
    names = [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    block = torch.randn(1 << 20, generator=torch.Generator().manual_seed(0)) * 0.02
    total = 0
    for name, group in zip(names, groups):
        part = {key: _fill(shapes[key], dtype, block) for key in group}
        save_file(part, str(directory / name), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in part.values())
        del part
    index = {"metadata": {"total_size": total}, "weight_map": {k: n for n, g in zip(names, groups) for k in g}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    config = {"architectures": ["Emu3ForCausalLM"], "attention_dropout": 0.1, "boi_token_id": 151852, "bos_token_id": 151849,
              "eof_token_id": 151847, "eoi_token_id": 151853, "eol_token_id": 151846, "eos_token_id": 151850,
              "hidden_act": "silu", "hidden_size": hidden, "image_area": 518400, "img_token_id": 151851,
              "initializer_range": 0.02, "intermediate_size": inter, "max_position_embeddings": 9216, "model_type": "Emu3",
              "num_attention_heads": heads, "num_hidden_layers": layers, "num_key_value_heads": kv, "pad_token_id": 151643,
              "pretraining_tp": 1, "rms_norm_eps": 1e-5, "rope_scaling": None, "rope_theta": 1000000.0,
              "tie_word_embeddings": False, "torch_dtype": dtype_name, "use_cache": True, "vocab_size": vocab}
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return total


def write_tokenizer(directory: Path, ranks_wanted: int = 151643, codebook: int = 32768) -> None:
    """A valid tiktoken vocabulary of Emu3's size: each new token joins two existing ones (<= 12 bytes)."""
    rng = random.Random(0)
    tokens = [bytes([b]) for b in range(256)]
    seen = set(tokens)
    while len(tokens) < ranks_wanted:
        token = rng.choice(tokens[-4096:] if rng.random() < 0.5 else tokens) + rng.choice(tokens[:4096])
        if len(token) <= 12 and token not in seen:
            seen.add(token)
            tokens.append(token)
    with open(directory / "emu3.tiktoken", "wb") as handle:
        for rank, token in enumerate(tokens):
            handle.write(base64.b64encode(token) + b" " + str(rank).encode() + b"\n")
    lines = ["<|image token|>", "<|image start|>", "<|image end|>"] + [f"<|visual token {k:06d}|>" for k in range(codebook)]
    (directory / "emu3_vision_tokens.txt").write_text("\n".join(lines) + "\n")


def write_vq(directory: Path) -> int:
    import torch
    from safetensors.torch import save_file

    from convert_fixtures import baai_vq_shapes

    block = torch.randn(1 << 20, generator=torch.Generator().manual_seed(1)) * 0.02
    state = {}
    for name, shape in baai_vq_shapes(EMU3_VQ).items():
        state[name] = torch.tensor(0) if name.endswith("num_batches_tracked") else _fill(shape, torch.float32, block)
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(EMU3_VQ, indent=2))
    return sum(t.numel() * t.element_size() for t in state.values())


def evict(paths) -> None:
    """Drop the files' pages from the page cache (the next read comes from disk); no root needed."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_child(command: list[str], log: Path) -> tuple[float, int, int]:
    """(seconds, peak RSS bytes, exit status) of one child process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    with open(log, "w") as out:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    return seconds, usage.ru_maxrss * 1024, process.returncode


def read_cold(paths) -> float:
    evict(paths)
    buffer = bytearray(64 << 20)
    start = time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass
    return time.perf_counter() - start


def copy_cold(paths, target: Path) -> float:
    evict(paths)
    target.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for path in paths:
        shutil.copyfile(path, target / path.name)
        fd = os.open(target / path.name, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    seconds = time.perf_counter() - start
    shutil.rmtree(target)
    return seconds


def write_source(work: Path, args) -> int:
    model, vq = work / "Emu3-Gen", work / "Emu3-VisionTokenizer"
    for folder in (model, vq):
        folder.mkdir(parents=True, exist_ok=True)
    lm_bytes = write_lm(model, args.layers, args.dtype, args.shard_gb)
    write_tokenizer(model)
    vq_bytes = write_vq(vq)
    (work / "source.json").write_text(json.dumps({"lm_bytes": lm_bytes, "vq_bytes": vq_bytes, "layers": args.layers,
                                                  "dtype": args.dtype}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--shard-gb", type=float, default=2.0, help="source shard size (BAAI's are ~5 GB)")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed at the end)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "convert.md"))
    parser.add_argument("--write-source", default=None, help=argparse.SUPPRESS)  # internal: the child that writes the source
    args = parser.parse_args()
    if args.write_source:
        return write_source(Path(args.write_source), args)

    # This process never imports torch and stays small: a child's ru_maxrss starts from its parent's size at fork
    # (Linux keeps the pre-exec high-water mark), so the source is written by a child process too.
    work = Path(args.work or tempfile.mkdtemp(prefix="progemu-bench-convert-", dir="/var/tmp"))
    model, vq = work / "Emu3-Gen", work / "Emu3-VisionTokenizer"
    try:
        if not (work / "source.json").is_file():
            clock = time.perf_counter()
            command = [sys.executable, __file__, "--write-source", str(work), "--layers", str(args.layers), "--dtype",
                       args.dtype, "--shard-gb", str(args.shard_gb)]
            subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
            print(f"wrote the BAAI-format source in {time.perf_counter() - clock:.0f} s", flush=True)
        sizes = json.loads((work / "source.json").read_text())
        lm_bytes, vq_bytes = sizes["lm_bytes"], sizes["vq_bytes"]
        weights = sorted(model.glob("*.safetensors")) + [vq / "model.safetensors"]
        total = lm_bytes + vq_bytes
        read_s = read_cold(weights)
        copy_s = copy_cold(weights, work / "copy")
        floor_s, floor_rss, _ = run_child([sys.executable, "-c", "import torch, transformers; from transformers import "
                                           "Emu3ForCausalLM, Emu3VQVAE, PreTrainedTokenizerFast; import progemu.convert"],
                                          work / "floor.log")
        rows = []
        for name, cold, extra in (("cold, SHA-256", True, []), ("warm, SHA-256", False, []),
                                  ("cold, --no-hash-sources", True, ["--no-hash-sources"])):
            out = work / "out"
            shutil.rmtree(out, ignore_errors=True)
            if cold:
                evict(weights)
            command = [sys.executable, "-m", "progemu.cli", "convert", "--model", str(model), "--vision-tokenizer", str(vq),
                       "--out", str(out), *extra]
            seconds, rss, code = run_child(command, work / "convert.log")
            text = (work / "convert.log").read_text()
            if code != 0:
                print(text[-3000:], file=sys.stderr)
                return 1
            match = re.search(r"streaming pass ([\d.]+) s", text)
            stream_s = float(match.group(1)) if match else float("nan")
            rows.append((name, seconds, stream_s, rss))
            print(f"{name}: {seconds:.1f} s total, {stream_s:.1f} s streaming, peak RSS {rss / 1e9:.2f} GB", flush=True)
        shutil.rmtree(work / "out", ignore_errors=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)

    import resource

    parent_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    gb = total / 1e9
    lines = [
        "# progemu convert: time and peak memory",
        "",
        f"Command: `OMP_NUM_THREADS=1 python bench/bench_convert.py --layers {args.layers} --dtype {args.dtype}`  ",
        f"Machine: {platform.machine()} CPU, {os.cpu_count()} cores (shared with other jobs), local disk, Python {platform.python_version()}.  ",
        f"Source (BAAI format, random weights): Emu3-Gen's width (hidden 4096, MLP 14336, vocab 184,622) with {args.layers} "
        f"layers in {args.dtype}, {len(weights) - 1} safetensors shards ({lm_bytes / 1e9:.2f} GB); BAAI/Emu3-VisionTokenizer's "
        f"architecture in float32 ({vq_bytes / 1e9:.2f} GB); a tiktoken vocabulary of Emu3's size (151,643 ranks + 33 k "
        f"special / visual tokens). Weights: {gb:.2f} GB.",
        "",
        "| run | total s | streaming pass s | weights MB/s (total) | weights MB/s (streaming) | peak RSS GB | peak RSS / weights |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, seconds, stream_s, rss in rows:
        lines.append(f"| {name} | {seconds:.1f} | {stream_s:.1f} | {total / 1e6 / seconds:.0f} | {total / 1e6 / stream_s:.0f} | "
                     f"{rss / 1e9:.2f} | {rss / total:.2f} |")
    lines += [
        "",
        "References on the same files and disk:",
        "",
        "| reference | s | MB/s |",
        "| --- | ---: | ---: |",
        f"| cold sequential read of the source weights | {read_s:.1f} | {total / 1e6 / read_s:.0f} |",
        f"| cold byte-for-byte copy + fsync (`shutil.copyfile`) | {copy_s:.1f} | {total / 1e6 / copy_s:.0f} |",
        f"| python + torch + transformers + progemu.convert imported, nothing else | {floor_s:.1f} | peak RSS {floor_rss / 1e9:.2f} GB |",
        f"| (this benchmark's own process, the parent of every run: peak RSS {parent_rss / 1e9:.2f} GB) | | |",
        "",
        "Total = the whole command (interpreter start, imports, tokenizer conversion, checks, streaming pass, tokenizer and "
        "config files); streaming pass = reading, hashing and writing + fsync of the weights. Peak RSS is the child's "
        "`ru_maxrss` and includes the import floor above; the rest is the tokenizer conversion (~0.3 GB for Emu3's "
        "vocabulary). Tensor bytes move inside the kernel (`copy_file_range`) while one thread reads each file once for its "
        "SHA-256 through a 64 MB buffer, so memory does not depend on the model's size. The machine is shared by several "
        "engineers (load average ~7 on 2 cores during these runs); expect +-30 % noise on times.",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
