"""Bringing a folder into a collection: which files it holds (`scan`), the incremental `Indexer` (`indexer`) and its
second stage, the text in photos (`text_stage`), jobs recorded on disk with a worker per collection (`jobs`), folder
watching (`watch`), and the two wired once for every adapter (`background`); embedding on a Ray cluster (`cluster`),
from a folder or an S3 prefix (`sources`), into an archive's Parquet shards (`store/shards.py`), made searchable by
an on-disk IVF-PQ index (`archive_build`). Imports `store`, `encoders` and `images`; jobs reach the service only
through a protocol."""
