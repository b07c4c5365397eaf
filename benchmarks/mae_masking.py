"""Encoding visible patches only pays: an MAE pretraining step at mask ratio 0.75 against one at
ratio 0 (every patch encoded), same model and batch, alternating in one process, medians.

    python benchmarks/mae_masking.py [--repeats 11] [--batch-size 64]
"""

from __future__ import annotations

import argparse

import torch
from timing import alternate

from mhc.model.backbones import create_backbone
from mhc.pretrain import create_objective


def make_step(ratio: float, batch_size: int, size: int, backbone: dict):
    torch.manual_seed(0)
    mae = create_objective("mae", create_backbone(**backbone), mask_ratio=ratio)
    optimizer = torch.optim.AdamW(mae.parameters(), lr=1e-3)
    images = torch.rand(batch_size, 3, size, size)

    def step() -> None:
        loss = mae(images).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    backbones = {
        "vit_tiny (192 wide, 6 deep)": {"name": "vit_tiny", "image_size": 64, "patch_size": 8},
        "vit 128 wide, 4 deep": {"name": "vit_tiny", "image_size": 64, "patch_size": 8, "dim": 128, "depth": 4, "num_heads": 4},
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, 64x64, 64 patches, "
          "decoder 128 wide, 2 deep")
    print(f"{'backbone':<30}{'ratio 0 (ms)':>14}{'ratio 0.75 (ms)':>17}{'ratio':>8}")
    for label, backbone in backbones.items():
        full, masked = alternate([make_step(0.0, args.batch_size, 64, backbone), make_step(0.75, args.batch_size, 64, backbone)],
                                 args.repeats)
        print(f"{label:<30}{full * 1e3:>14.1f}{masked * 1e3:>17.1f}{masked / full:>8.3f}")


if __name__ == "__main__":
    main()
