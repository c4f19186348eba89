"""Tools over the whole library: duplicate groups (`duplicates`) and one photo looked at closely (`photo_view`).
Imports `store` and `images`."""
