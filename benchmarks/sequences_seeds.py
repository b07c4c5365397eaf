"""``experiment=sequences`` over several seeds: each head's test accuracy and the wall time of
every seed (the seed also draws the generated data), in one Markdown table.

    python benchmarks/sequences_seeds.py --seeds 0 1 2 3 4 --work /tmp/sequences

Each seed is ``mhc-train experiment=sequences seed=S`` in its own process, as a user types it;
run it on an idle machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from recipes import mhc_run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=Path("sequences_seeds"))
    parser.add_argument("overrides", nargs="*", help="more mhc-train overrides")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        cell = mhc_run(["experiment=sequences", f"seed={seed}", *args.overrides], args.work / f"seed{seed}")
        rows.append((seed, cell))
        print(f"seed {seed}: " + ", ".join(f"{t} {m['acc']:.4f}" for t, m in cell["heads"].items()) + f" ({cell['seconds']:.0f} s)", flush=True)
    heads = list(rows[0][1]["heads"])
    print("\n| seed | " + " | ".join(heads) + " | wall time |\n|---:|" + "---:|" * (len(heads) + 1))
    for seed, cell in rows:
        print(f"| {seed} | " + " | ".join(f"{cell['heads'][t]['acc']:.4f}" for t in heads) + f" | {cell['seconds']:.0f} s |")


if __name__ == "__main__":
    main()
