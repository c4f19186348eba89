"""The family behaviour suite (family_suite.py) on SigLIP 2 fixed resolution: model type siglip with a Gemma tokenizer;
texts lowercased and padded to 64."""

from family_suite import *  # noqa: F403 - the suite's tests and fixtures run in this module
from family_suite import family_fixtures

from bench.families import write_random_siglip2 as write

checkpoint, other, family, text_rules = family_fixtures("siglip2", write, lowercase=True, pad_to_context=True)
