"""Decoding speed with and without the key/value cache: same random network, same prompts.

    python bench/generation_speed.py [--arch gpt|t5] [--prompt 64] [--new 128] [--batch 4] \
        [--decoding greedy|beam] [--device cpu|cuda] [--repeats 2]

Prints new tokens/s of each and the cached/uncached ratio, and checks both decoded the same
tokens. Without a cache each step reruns the whole prefix, so the ratio grows with the length.
"""

from __future__ import annotations

import argparse
import time

import torch

from lmpretrain.models import GPT, EncoderDecoder, EncoderDecoderConfig, GPTConfig
from lmpretrain.models.generation import generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", choices=["gpt", "t5"], default="gpt")
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--decoding", choices=["greedy", "beam"], default="greedy")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    torch.manual_seed(0)
    size = {"vocab_size": 8192, "block_size": args.prompt + args.new, "n_layer": 4, "n_head": 4, "n_embd": 256}
    if args.arch == "gpt":
        net, kw = GPT(GPTConfig(**size, position="rotary")), {}
    else:
        net, kw = EncoderDecoder(EncoderDecoderConfig(**size, dropout=0.0)), {"decoder_start_id": 0}
    net = net.to(args.device).eval()
    x = torch.randint(0, size["vocab_size"], (args.batch, args.prompt), device=args.device)

    def run(use_cache: bool) -> tuple[float, torch.Tensor]:
        best, out = 0.0, None
        for _ in range(args.repeats):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = generate(net, x, max_new_tokens=args.new, strategy=args.decoding, use_cache=use_cache, **kw)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            best = max(best, out.numel() / (time.perf_counter() - t0))
        return best, out

    cached, a = run(True)
    uncached, b = run(False)
    print(f"{args.arch} {args.decoding} batch={args.batch} prompt={args.prompt} new={args.new} on {args.device}")
    print(f"cached:   {cached:10.1f} new tokens/s")
    print(f"uncached: {uncached:10.1f} new tokens/s")
    print(f"ratio:    {cached / uncached:10.2f}x   same tokens: {torch.equal(a, b)}")


if __name__ == "__main__":
    main()
