"""Models as users mean the word: a checkpoint's files, located or downloaded once (`files`), its identity
(`identity`), its family and text rules (`families`), and the recommended list (`recommended`). Imports only the
bottom."""
