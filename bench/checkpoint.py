"""Write a CLIP checkpoint with random weights: the real transformers classes, for offline tests and speed work.

`--size vit-b-32` has the full ViT-B/32 architecture (the real model's cost, meaningless results); `--size tiny` is
small enough for unit tests. The tokenizer is a real CLIPTokenizer over a byte-level vocabulary (no merges), or,
with `--bpe`, over CLIP's own 49,408-token vocabulary rebuilt from its BPE merges file (`bpe_simple_vocab_16e6.txt.gz`,
shipped in the `open_clip_torch` wheel), so text costs what it costs with the real model.

    python -m bench.checkpoint /tmp/clip-random --size vit-b-32 [--bpe bpe_simple_vocab_16e6.txt.gz]
"""

import argparse
import gzip
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


def byte_alphabet() -> list[str]:
    """Byte-level BPE's 256 symbols, in byte-level BPE's order: printable bytes as themselves, first, then the
    other bytes shifted to code points from 256 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def clip_vocabulary(bpe_file: Path | None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary and merges from its BPE file, or a merge-free byte-level vocabulary without one."""
    symbols = byte_alphabet()
    merges: list[tuple[str, str]] = []
    if bpe_file is not None:
        with gzip.open(bpe_file, "rt", encoding="utf-8") as handle:
            lines = handle.read().split("\n")
        # CLIP uses the first 49152 - 256 - 2 merges after the version line.
        merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]  # type: ignore[misc]
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(pair) for pair in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}, merges


def write_random_clip(folder: Path, size: str = "tiny", seed: int = 0, bpe_file: Path | None = None) -> Path:
    """Save model, tokenizer and preprocessor config to `folder`, loadable with `from_pretrained(folder)`."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    shape = {"tiny": TINY, "vit-b-32": VIT_B_32}[size]
    vocab, merges = clip_vocabulary(bpe_file)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
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
    parser.add_argument("--bpe", type=Path, help="CLIP's bpe_simple_vocab_16e6.txt.gz, for its real tokenizer")
    args = parser.parse_args()
    print(write_random_clip(args.folder, args.size, bpe_file=args.bpe))


if __name__ == "__main__":
    main()
