"""The family behaviour suite (family_suite.py) on CLIP (OpenAI, LAION, DFN, MetaCLIP 1 checkpoints): CLIPModel,
CLIPTokenizer (byte-level BPE)."""

from family_suite import *  # noqa: F403 - the suite's tests and fixtures run in this module
from family_suite import family_fixtures

from bench.checkpoint import write_random_clip as write

checkpoint, other, family, text_rules = family_fixtures("clip", write, lowercase=False, pad_to_context=False)
