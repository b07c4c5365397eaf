"""Tiny models in the formats people download, built with each library's own API, so the
timm, torchvision and Hugging Face paths run for real without a network."""

from __future__ import annotations

from pathlib import Path

import torch

TEXTS = [
    "the cat sat on the mat", "a dog ran in the park", "birds fly over the sea", "the sun is bright today",
    "my order never arrived", "the printer is on fire", "refund my order please", "what a lovely morning",
]
BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 64}


def wordpiece_tokenizer(folder: Path, texts: list[str] = TEXTS):
    """A BERT-style WordPiece tokenizer trained with ``tokenizers`` on ``texts`` and saved as a
    ``transformers`` fast tokenizer in ``folder``; returns it."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(texts * 3, trainers.WordPieceTrainer(vocab_size=120, special_tokens=specials))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[(t, tokenizer.token_to_id(t)) for t in ("[CLS]", "[SEP]")])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(folder)
    return fast


def bert_folder(folder: Path) -> Path:
    """A 2-layer BERT (hidden size 32) with its WordPiece tokenizer, saved as a hub model folder."""
    from transformers import BertConfig, BertModel

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = wordpiece_tokenizer(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **BERT)).save_pretrained(folder)
    return folder


def gpt2_folder(folder: Path) -> Path:
    """A 2-layer GPT-2 with a byte-level BPE tokenizer and no padding token (decoder models' way)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2Model, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(TEXTS * 3, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(fast), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                        eos_token_id=fast.eos_token_id, bos_token_id=fast.eos_token_id)
    GPT2Model(config).save_pretrained(folder)
    return folder


def timm_weights(path: Path, model: str = "test_resnet", **kwargs) -> Path:
    """A timm model's full state dict (classifier included), as timm's own files hold it."""
    import timm

    torch.manual_seed(0)
    state = timm.create_model(model, pretrained=False, **kwargs).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def vit_folder(folder: Path) -> Path:
    """A 2-layer Hugging Face ViT (32 px, 8 px patches) with its image processor config."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64), add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessor(image_mean=[0.4, 0.45, 0.5], image_std=[0.2, 0.25, 0.3]).save_pretrained(folder)
    return folder
