"""Queries against one collection: `Searcher` (`searcher`), filters and order (`filters`), how a filtered search
runs (`filtered`) and composed queries (`composition`). Imports `store`, `encoders`, `library`, `images`."""
