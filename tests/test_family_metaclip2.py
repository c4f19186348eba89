"""The family behaviour suite (family_suite.py) on MetaCLIP 2 (multilingual): MetaClip2Model, XLMRobertaTokenizer."""

from family_suite import *  # noqa: F403 - the suite's tests and fixtures run in this module
from family_suite import family_fixtures

from bench.families import write_random_metaclip2 as write

checkpoint, other, family, text_rules = family_fixtures("metaclip2", write, lowercase=False, pad_to_context=False)
