"""The family behaviour suite (family_suite.py) on SigLIP: SiglipModel, SiglipTokenizer (SentencePiece), texts padded
to the context (64)."""

from family_suite import *  # noqa: F403 - the suite's tests and fixtures run in this module
from family_suite import family_fixtures

from bench.families import write_random_siglip as write

checkpoint, other, family, text_rules = family_fixtures("siglip", write, lowercase=False, pad_to_context=True)
