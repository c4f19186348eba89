"""A transformers tokenizer as a `tokenizers.Tokenizer`, so that the ONNX engine tokenises without transformers.

A fast tokenizer is used as it is; a slow (SentencePiece) one goes through transformers' converter; SigLIP's, which
that converter does not know, is built here: its SentencePiece model as SentencePiece runs it (transformers' own
`SpmConverter.build_tokenizer_from_spm_proto`), behind SigLIP's text canonicalisation (lower-case, ASCII punctuation
removed, runs of whitespace made one space, stripped) and followed by its end-of-sequence token. Whatever is built,
the export compares its ids with the original tokenizer's before trusting it (`onnx_export._check_tokens`)."""

import string
from typing import Any


class NoFastTokenizer(Exception):
    """The tokenizer has no `tokenizers` version."""


def fast_tokenizer(tokenizer: Any) -> Any:
    """The `tokenizers.Tokenizer` doing what `tokenizer` (a transformers tokenizer) does, before padding and
    truncation (which the caller sets)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend
    if type(tokenizer).__name__ == "SiglipTokenizer":
        return _siglip(tokenizer)
    try:
        from transformers.convert_slow_tokenizer import convert_slow_tokenizer

        return convert_slow_tokenizer(tokenizer)
    except Exception as exc:  # the converter raises what its dependencies raise
        raise NoFastTokenizer(f"its tokenizer has no `tokenizers` version ({str(exc).splitlines()[0][:120]})") from exc


def _siglip(tokenizer: Any) -> Any:
    from tokenizers import Regex, normalizers, processors
    from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

    try:
        proto = import_protobuf().ModelProto()
        with open(tokenizer.vocab_file, "rb") as f:
            proto.ParseFromString(f.read())
    except Exception as exc:  # protobuf's decode errors, a missing file
        raise NoFastTokenizer(f"its SentencePiece model is unreadable ({str(exc).splitlines()[0][:120]})") from exc
    built = SpmConverter.build_tokenizer_from_spm_proto(proto, [(piece.piece, piece.score) for piece in proto.pieces])
    if built is None:
        raise NoFastTokenizer("its SentencePiece model is of a kind the converter does not build")
    punctuation = "".join("\\" + c for c in string.punctuation)
    canonical = [normalizers.Lowercase()] if tokenizer.do_lower_case else []
    canonical += [
        normalizers.Replace(Regex(f"[{punctuation}]"), ""),
        normalizers.Replace(Regex(r"\s+"), " "),
        normalizers.Strip(),
    ]
    built.normalizer = normalizers.Sequence([*canonical, built.normalizer])
    eos = str(tokenizer.eos_token)
    built.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", special_tokens=[(eos, tokenizer.eos_token_id)]
    )
    return built
