"""The family behaviour suite (family_suite.py) on MetaCLIP 2 (multilingual): MetaClip2Model, XLMRobertaTokenizer."""

from family_suite import (  # noqa: F401 - the imported tests and fixtures run in this module
    family_fixtures,
    test_a_checkpoint_missing_weights_is_refused_not_filled_with_random_ones,
    test_another_model_for_the_collection_is_refused,
    test_family_is_told_from_the_checkpoint_files,
    test_indexes_and_searches_by_text_and_image_through_the_tools,
    test_preprocessing_equals_the_checkpoints_own_image_processor,
    test_texts_are_fed_as_the_family_was_trained,
    workspace,
)

from bench.families import write_random_metaclip2 as write

checkpoint, other, family, text_rules = family_fixtures("metaclip2", write, lowercase=False, pad_to_context=False)
