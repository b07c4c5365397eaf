"""Self-attention kernels on CPU: ``F.scaled_dot_product_attention`` against the explicit product
(``softmax(q k^T / sqrt(d)) v``, softmax in float32), forward and backward, in float32 and
bfloat16, over sequence lengths. The two alternate in one process; medians over repeats.

This table sets ``EXPLICIT_BF16_CPU_MAX_LENGTH`` in ``mhc/model/backbones/attention.py``.

    python benchmarks/attention_kernels.py [--repeats 5]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from timing import alternate

SHAPES = [(128, 3, 65, 64), (64, 4, 128, 32), (32, 4, 256, 32), (8, 4, 1024, 32)]  # B, H, L, d; first: ViT-Tiny at 64x64


def kernels(batch: int, heads: int, length: int, dim: int, dtype: torch.dtype):
    q, k, v = (torch.randn(batch, heads, length, dim, dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(batch, heads, length, dim, dtype=dtype)

    def sdpa() -> None:
        F.scaled_dot_product_attention(q, k, v).backward(grad)

    def explicit() -> None:
        weights = ((q @ k.transpose(-2, -1)) / dim**0.5).float().softmax(dim=-1).to(dtype)
        (weights @ v).backward(grad)

    return sdpa, explicit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; forward + backward, ms")
    print("| dtype | B x H x L x d | SDPA | explicit | explicit / SDPA |")
    print("|---|---|---:|---:|---:|")
    for dtype in (torch.float32, torch.bfloat16):
        for shape in SHAPES:
            sdpa, explicit = alternate(list(kernels(*shape, dtype)), args.repeats, warmup=1)
            print(f"| {str(dtype).removeprefix('torch.')} | {' x '.join(map(str, shape))} | {sdpa * 1e3:.1f} | "
                  f"{explicit * 1e3:.1f} | {explicit / sdpa:.2f} |", flush=True)


if __name__ == "__main__":
    main()
