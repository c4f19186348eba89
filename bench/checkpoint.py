"""Write a CLIP checkpoint with random weights: the real transformers classes, for offline tests and speed work.

`--size vit-b-32` has the full ViT-B/32 architecture (the real model's cost, meaningless results); `--size tiny` is
small enough for unit tests. The tokenizer is a real CLIPTokenizer over a byte-level vocabulary (no merges), since
CLIP's own vocabulary is not available offline.

    python -m bench.checkpoint /tmp/clip-random --size vit-b-32
"""

import argparse
from pathlib import Path
from typing import Any

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

TINY: dict[str, Any] = {
    "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
    "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
    "projection_dim": 24,
}
# transformers' CLIPConfig defaults are ViT-B/32: 512-d text, 768-d vision, 12 layers each, 512-d projection.
VIT_B_32: dict[str, Any] = {"text": {}, "vision": {}, "projection_dim": 512}


def write_random_clip(folder: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Save model, tokenizer and preprocessor config to `folder`, loadable with `from_pretrained(folder)`."""
    import torch
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    shape = {"tiny": TINY, "vit-b-32": VIT_B_32}[size]
    alphabet = sorted(ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({ch + "</w>": len(alphabet) + i for i, ch in enumerate(alphabet)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    config = CLIPConfig(
        text_config={
            **shape["text"],
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={**shape["vision"], "image_size": 224, "patch_size": 32},
        projection_dim=shape["projection_dim"],
    )
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessorPil(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, image_mean=CLIP_MEAN, image_std=CLIP_STD
    ).save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--size", choices=["tiny", "vit-b-32"], default="vit-b-32")
    args = parser.parse_args()
    print(write_random_clip(args.folder, args.size))


if __name__ == "__main__":
    main()
