"""Queries against one collection: `Searcher` (`searcher`), filters and order (`filters`), how a filtered search
runs (`filtered`), composed queries (`composition`), photos ranked by the text read in them (`text_ranking`) and the
results as the tools return them, with text snippets (`hits`). Imports `store`, `encoders`, `library`, `images`."""
