"""Tools over the whole library: duplicate groups (`duplicates`), their candidate pairs found cell by cell over the
stored vectors (`near_pairs`), computed once per collection commit in the background and remembered
(`duplicate_tasks`), and one photo looked at closely, with the text read in it (`photo_view`). Imports `store`,
`images` and `encoders` (the recognised text's types)."""
