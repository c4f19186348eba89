"""Tools over the whole library: duplicate groups (`duplicates`), computed once per collection commit in the
background and remembered (`duplicate_tasks`), and one photo looked at closely (`photo_view`). Imports `store` and
`images`."""
