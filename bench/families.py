"""Write multilingual SigLIP, SigLIP 2 and MetaCLIP 2 checkpoints with random weights, for offline tests and speed work.

Each folder holds what the hub checkpoint of its family holds, written with `save_pretrained`, so `AutoConfig`,
`AutoTokenizer`, `AutoImageProcessor` and the model class load it with `from_pretrained(folder)` and no network:

- `siglip` (like google/siglip-base-patch16-256-multilingual): `SiglipModel`, a lowercasing `SiglipTokenizer` over a
  SentencePiece unigram model (`spiece.model`), `SiglipImageProcessorPil`.
- `siglip2` (like google/siglip2-base-patch16-256, the fixed-resolution kind): the hub ships these as SigLIP models
  (`model_type` "siglip") with a Gemma tokenizer, so it is `SiglipModel`, a `GemmaTokenizer` (byte-fallback BPE, no
  BOS, EOS appended, right padding) and `SiglipImageProcessorPil`.
- `metaclip2` (like the MetaCLIP 2 worldwide models): `MetaClip2Model`, an `XLMRobertaTokenizer` (unigram) and
  `CLIPImageProcessorPil`.

The tokenizers are the real transformers classes over small vocabularies trained in-process on `CORPUS`, a few
captions in English, German, French, Chinese and Japanese, so non-Latin text gets real ids rather than unknowns.
`--size tiny` is small enough for unit tests (well under a second to build once transformers' model classes are
imported); `--size base` has the real base
architecture, including the real text vocabulary size for the embedding matrix (250,000, 256,000 and 901,629 rows),
so memory and speed are what the real model costs, though the tokenizer only ever produces ids from its small
vocabulary. SigLIP models want `padding="max_length"` (64 tokens), MetaCLIP 2 pads like CLIP.

    python -m bench.families /tmp/siglip2-random --family siglip2 --size base
"""

import argparse
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.checkpoint import CLIP_MEAN, CLIP_STD

if TYPE_CHECKING:
    from transformers import GemmaTokenizer, SiglipTokenizer, XLMRobertaTokenizer

# Captions in the five languages the tokenizers are trained on, with a pangram for each Latin-script one: every
# character here gets a token of its own, as does each of ASCII's printable characters (`ALPHABET`).
CORPUS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "a dog runs on the grass in the park",
    "a photo of a cat sleeping on a red sofa",
    "two children playing football on the beach at sunset",
    "a bowl of fresh fruit on a wooden kitchen table",
    "snow on the mountains above a quiet blue lake",
    "an old car parked in front of a yellow house",
    "a woman riding a bicycle through the city at night",
    "Victor jagt zwölf Boxkämpfer quer über den großen Sylter Deich.",
    "ein Hund läuft über die grüne Wiese",
    "ein Foto von einer Katze, die auf dem Sofa schläft",
    "Kinder spielen am Strand im Sommer",
    "eine Schüssel mit frischem Obst auf dem Küchentisch",
    "Schnee auf den Bergen über einem ruhigen See",
    "Portez ce vieux whisky au juge blond qui fume !",
    "un chien court dans le parc",
    "une photo d'un chat qui dort sur un canapé rouge",
    "des enfants jouent au football sur la plage au coucher du soleil",
    "un bol de fruits frais sur une table en bois",
    "la neige sur les montagnes au-dessus d'un lac tranquille",
    "一只狗在公园的草地上奔跑",
    "一只猫睡在红色的沙发上",
    "两个孩子在海边踢足球，太阳正在落山",
    "木桌上放着一碗新鲜的水果",
    "雪山下面有一个安静的蓝色湖泊",
    "一辆旧汽车停在黄色的房子前面",
    "夜晚一个女人骑着自行车穿过城市",
    "公園の芝生の上を犬が走っている",
    "赤いソファの上で猫が寝ています",
    "夕日の海辺で子供たちがサッカーをしている",
    "木のテーブルの上に新鮮な果物があります",
    "静かな湖の上に雪の山が見える",
    "黄色い家の前に古い車が止まっている",
    "夜の町を自転車で走る女の人",
)

ALPHABET: list[str] = [chr(code) for code in range(ord("!"), ord("~") + 1)]
TINY_VOCAB = 1000  # at most: SentencePiece stops short of it on so small a corpus

TINY_TOWER: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
}
# ViT-B: both towers of SigLIP base, MetaCLIP 2 B/32's image tower.
BASE_TOWER: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
}

# `vocab_size` None: the trained tokenizer's own size; a number: the real model's embedding rows.
SIGLIP: dict[str, dict[str, Any]] = {
    "tiny": {"text": TINY_TOWER, "vision": {**TINY_TOWER, "image_size": 224, "patch_size": 32}, "vocab_size": None},
    # google/siglip-base-patch16-256-multilingual
    "base": {"text": BASE_TOWER, "vision": {**BASE_TOWER, "image_size": 256, "patch_size": 16}, "vocab_size": 250_000},
}
# google/siglip2-base-patch16-256: the same architecture over Gemma's vocabulary.
SIGLIP2: dict[str, dict[str, Any]] = {"tiny": SIGLIP["tiny"], "base": {**SIGLIP["base"], "vocab_size": 256_000}}
# MetaCLIP 2 worldwide B/32 (facebookresearch/MetaCLIP, mini_clip/model_configs/ViT-B-32-worldwide.json): a 512-wide,
# 8-head text tower over XLM-V's 901,629-token vocabulary, GELU rather than QuickGELU.
METACLIP2: dict[str, dict[str, Any]] = {
    "tiny": {"text": TINY_TOWER, "vision": TINY_TOWER, "projection_dim": 24, "vocab_size": None},
    "base": {
        "text": {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 8},
        "vision": BASE_TOWER,
        "projection_dim": 512,
        "vocab_size": 901_629,
    },
}


def train_sentencepiece(lowercase: bool = False, **ids: int) -> bytes:
    """A serialized SentencePiece unigram model trained on `CORPUS` and `ALPHABET`, keeping every character, with the
    special ids given (SentencePiece's `bos_id`, `eos_id`, `pad_id`, `unk_id`; -1 for none). Deterministic, which the
    `tokenizers` unigram trainer is not: it breaks ties between equal scores differently from one run to the next."""
    import sentencepiece as spm

    sentences = [*CORPUS, " ".join(ALPHABET)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([sentence.lower() for sentence in sentences] if lowercase else sentences),
        model_writer=model,
        model_type="unigram",
        vocab_size=TINY_VOCAB,
        hard_vocab_limit=False,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
        **ids,
    )
    return model.getvalue()


def train_siglip_tokenizer(folder: Path) -> "SiglipTokenizer":
    """A lowercasing SiglipTokenizer over a SentencePiece model trained on lowercased text (all it will see), written
    to `folder/spiece.model`, the file the tokenizer reads. Ids as SigLIP's: `<pad>` 0, `</s>` 1 (also the padding
    token), `<unk>` 2, no BOS."""
    from transformers import SiglipTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder / "spiece.model"
    vocab_file.write_bytes(train_sentencepiece(lowercase=True, pad_id=0, eos_id=1, unk_id=2, bos_id=-1))
    return SiglipTokenizer(vocab_file=str(vocab_file), do_lower_case=True, model_max_length=64)


def train_gemma_tokenizer() -> "GemmaTokenizer":
    """A GemmaTokenizer over a byte-fallback BPE vocabulary trained on `CORPUS`, set up as SigLIP 2's: `<pad>` 0,
    `<eos>` 1, `<bos>` 2, `<unk>` 3, `<mask>` 4, the 256 byte tokens, no BOS, EOS appended, right padding."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import GemmaTokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + [f"<0x{byte:02X}>" for byte in range(256)]
    trainer_tokenizer = Tokenizer(BPE(unk_token="<unk>", byte_fallback=True))
    # GemmaTokenizer's own normalizer; splitting before each "▁" keeps merges within words, as Gemma's are.
    trainer_tokenizer.normalizer = normalizers.Replace(" ", "▁")
    trainer_tokenizer.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    trainer_tokenizer.train_from_iterator(
        CORPUS,
        BpeTrainer(vocab_size=TINY_VOCAB, special_tokens=specials, initial_alphabet=ALPHABET, show_progress=False),
    )
    model = json.loads(trainer_tokenizer.to_str())["model"]
    return GemmaTokenizer(
        vocab=model["vocab"],
        merges=[tuple(merge) for merge in model["merges"]],
        add_bos_token=False,
        add_eos_token=True,
        padding_side="right",
        model_max_length=64,
    )


def train_xlm_roberta_tokenizer() -> "XLMRobertaTokenizer":
    """An XLMRobertaTokenizer over a SentencePiece unigram vocabulary trained on `CORPUS`, with XLM-R's (and XLM-V's)
    ids: `<s>` 0, `<pad>` 1, `</s>` 2, `<unk>` 3, and `<mask>` last. The vocabulary is trained without SentencePiece's
    NFKC normalization, as the tokenizer has none (XLM-R's precompiled one is left out)."""
    import sentencepiece as spm
    from transformers import XLMRobertaTokenizer

    model = spm.SentencePieceProcessor(
        model_proto=train_sentencepiece(bos_id=0, pad_id=1, eos_id=2, unk_id=3, normalization_rule_name="identity")
    )
    vocab = [(model.id_to_piece(i), model.get_score(i)) for i in range(model.get_piece_size())]
    return XLMRobertaTokenizer(vocab=[*vocab, ("<mask>", 0.0)], model_max_length=77)


def _write_siglip(
    folder: Path, tokenizer: "SiglipTokenizer | GemmaTokenizer", shape: dict[str, Any], seed: int
) -> Path:
    """Save a random SiglipModel for `tokenizer`'s special ids, `tokenizer` and SigLIP's image processor to `folder`."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel
    from transformers.image_utils import PILImageResampling

    config = SiglipConfig(
        text_config={
            **shape["text"],
            "vocab_size": shape["vocab_size"] or len(tokenizer),
            "max_position_embeddings": 64,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config=shape["vision"],
    )
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    SiglipModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    side = shape["vision"]["image_size"]
    SiglipImageProcessorPil(
        size={"height": side, "width": side},
        resample=PILImageResampling.BICUBIC,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    ).save_pretrained(folder)
    return folder


def write_random_siglip(folder: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Save a random multilingual SigLIP (SiglipModel, SiglipTokenizer, SigLIP image processor) to `folder`."""
    return _write_siglip(folder, train_siglip_tokenizer(folder), SIGLIP[size], seed)


def write_random_siglip2(folder: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Save a random fixed-resolution SigLIP 2 (SiglipModel, GemmaTokenizer, SigLIP image processor) to `folder`."""
    return _write_siglip(folder, train_gemma_tokenizer(), SIGLIP2[size], seed)


def write_random_metaclip2(folder: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Save a random MetaCLIP 2 worldwide (MetaClip2Model, XLMRobertaTokenizer, CLIP image processor) to `folder`."""
    import torch
    from transformers import CLIPImageProcessorPil, MetaClip2Config, MetaClip2Model

    shape = METACLIP2[size]
    tokenizer = train_xlm_roberta_tokenizer()
    config = MetaClip2Config(
        text_config={
            **shape["text"],
            "vocab_size": shape["vocab_size"] or len(tokenizer),
            "max_position_embeddings": 77,
            "hidden_act": "gelu",
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={**shape["vision"], "image_size": 224, "patch_size": 32, "hidden_act": "gelu"},
        projection_dim=shape["projection_dim"],
    )
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    MetaClip2Model(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessorPil(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, image_mean=CLIP_MEAN, image_std=CLIP_STD
    ).save_pretrained(folder)
    return folder


WRITERS: dict[str, Callable[[Path, str, int], Path]] = {
    "siglip": write_random_siglip,
    "siglip2": write_random_siglip2,
    "metaclip2": write_random_metaclip2,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--family", choices=sorted(WRITERS), required=True)
    parser.add_argument("--size", choices=["tiny", "base"], default="base")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(WRITERS[args.family](args.folder, args.size, args.seed))


if __name__ == "__main__":
    main()
