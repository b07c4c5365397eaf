"""LoRA against full fine-tuning of the same text encoder: trainable parameters and step time.

Both sides train a BERT-shaped encoder of Hugging Face transformers (``backbone=hf``, built
from its config: 6 layers, width 384, 12 heads, as MiniLM) with two heads, on the same batches
of random token ids, with AdamW: one side every weight, the other LoRA adapters of rank ``r``
on every linear layer of the encoder (``backbone.lora.r``) and the heads. The steps alternate
in one process; the table gives the median seconds per step (forward, backward, optimizer).

    python benchmarks/lora.py [--rank 8] [--batch 16] [--length 128] [--repeats 10]
"""

from __future__ import annotations

import argparse

import torch
from timing import alternate

from mhc.model import MultiHeadNet
from mhc.processing.processors import TextProcessor
from mhc.tasks import TaskSpec

ENCODER = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6,
           "num_attention_heads": 12, "intermediate_size": 1536, "max_position_embeddings": 512}
TASKS = [TaskSpec("topic", "multiclass", [f"t{i}" for i in range(10)]), TaskSpec("urgent", "binary", ["no", "yes"])]


def network(length: int, lora: dict | None) -> MultiHeadNet:
    torch.manual_seed(0)
    backbone = {"name": "hf", "config": ENCODER, "max_length": length, **({"lora": lora} if lora else {})}
    return MultiHeadNet(backbone, TASKS, TextProcessor(max_length=length)).train()


def trainable(net: MultiHeadNet) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def step_of(net: MultiHeadNet, ids: torch.Tensor, labels: torch.Tensor):
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        logits = net(ids)
        loss = torch.nn.functional.cross_entropy(logits["topic"], labels)
        loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(logits["urgent"][:, 0], (labels % 2).float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, ENCODER["vocab_size"], (args.batch, args.length), generator=generator)
    labels = torch.randint(0, 10, (args.batch,), generator=generator)
    full, lora = network(args.length, None), network(args.length, {"r": args.rank})
    seconds = alternate([step_of(full, ids, labels), step_of(lora, ids, labels)], args.repeats)
    total = sum(p.numel() for p in full.parameters())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; encoder 6x384, batch {args.batch} x {args.length} "
          f"tokens, AdamW, median of {args.repeats} steps")
    print("| fine-tuning | trainable parameters | share | s/step | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for name, net, time in (("full", full, seconds[0]), (f"LoRA r={args.rank}", lora, seconds[1])):
        print(f"| {name} | {trainable(net):,} | {trainable(net) / total:.2%} | {time:.3f} | {seconds[0] / time:.2f}x |")


if __name__ == "__main__":
    main()
