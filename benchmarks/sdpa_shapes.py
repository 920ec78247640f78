"""Cost of one masked SDPA call when its shape changes from call to call, per attention backend (issue 18).

The trainer's list-by-list attention (`model.logprobs.attention._lists_attention`) calls `scaled_dot_product_attention`
once per list with an additive tree mask, and every list has its own length, so almost every call has a shape not seen
before. On an H200 (benchmarks/RESULTS.md) the tiny model's training step then spent ~47 ms in each SDPA call and
~1.5 s in backward, 7x slower than on two CPU cores, while the 7B benchmark, whose shapes repeat, did not show it.
A backend that builds a plan per shape (cuDNN attention) would do that. This script times forward + backward of
one call, median over calls, for shapes that repeat and shapes that change, under each backend PyTorch offers on
the device, side by side in one run:

    python benchmarks/sdpa_shapes.py                       # cuda if present, else cpu
    python benchmarks/sdpa_shapes.py --heads 32 --head_dim 128 --lengths 600 1100   # 7B-like shapes

Prints one row per backend: ms per call with a fixed shape, with a new shape each call, and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

from perpo.config import cpu_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help="bfloat16 or float32 (default: bfloat16 on cuda)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads (default 4: the tiny LLaVA)")
    parser.add_argument("--head_dim", type=int, default=48, help="head size (default 48: the tiny LLaVA)")
    parser.add_argument(
        "--lengths",
        type=int,
        nargs=2,
        default=(280, 420),
        metavar=("MIN", "MAX"),
        help="list lengths drawn for the changing shapes (default: the tiny demo's lists)",
    )
    parser.add_argument("--calls", type=int, default=40, help="timed calls per setting (default 40)")
    args = parser.parse_args(argv)

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device == "cuda" else "float32"))
    generator = torch.Generator().manual_seed(0)
    low, high = args.lengths
    changing = torch.randint(low, high + 1, (args.calls + 3,), generator=generator).tolist()
    fixed = [high] * (args.calls + 3)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def one_call(length: int) -> float:
        q, k, v = (
            torch.randn(1, args.heads, length, args.head_dim, device=device, dtype=dtype, requires_grad=True)
            for _ in range(3)
        )
        allowed = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        mask = torch.zeros(1, 1, length, length, device=device, dtype=dtype).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )
        sync()
        start = time.perf_counter()
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out.sum().backward()
        sync()
        return time.perf_counter() - start

    def median_ms(lengths: list[int]) -> float:
        times = [one_call(n) for n in lengths]
        return 1000 * statistics.median(times[3:])  # the first calls warm up

    backends = {"default": None, "math": [SDPBackend.MATH]}
    if device == "cuda":
        backends |= {
            "efficient": [SDPBackend.EFFICIENT_ATTENTION],
            "cudnn": [SDPBackend.CUDNN_ATTENTION],
            "no-cudnn": [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.MATH],
        }
    name = torch.cuda.get_device_name(0) if device == "cuda" else cpu_model()
    print(
        f"sdpa_shapes: {name}, torch {torch.__version__}, {dtype}, heads {args.heads}, head_dim {args.head_dim}, "
        f"lengths {low}-{high}, {args.calls} timed calls each (forward + backward, additive causal mask)"
    )
    print(f"{'backend':<10} {'fixed ms':>9} {'changing ms':>12} {'changing/fixed':>15}")
    for label, choice in backends.items():
        try:
            if choice is None:
                fixed_ms, changing_ms = median_ms(fixed), median_ms(changing)
            else:
                with sdpa_kernel(choice):
                    fixed_ms, changing_ms = median_ms(fixed), median_ms(changing)
        except RuntimeError as error:  # a backend that cannot serve these inputs
            print(f"{label:<10} not available: {str(error).splitlines()[0][:80]}")
            continue
        print(f"{label:<10} {fixed_ms:>9.2f} {changing_ms:>12.2f} {changing_ms / fixed_ms:>14.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
