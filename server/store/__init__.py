"""The persisted collection: the SQLite catalog's schema, migrations and connection (`schema`), reading it (`catalog`:
entries, rows without opening a collection, vectors by id or in chunks), the manifest (`manifest`), the FAISS index
(`faiss_index`) and its files on disk (`index_files`), one open `Collection` (`collection`) and the hits its search
returns (`hits`), the index directory's `CollectionStore` (`collection_store`), the batched writer (`writer`), the
text recognised in photos, stored and matched (`text_search`), and videos' frames, each tied to a time, merged into
search results (`frames`). An archive built on a cluster: its Parquet shards (`shards`), its on-disk IVF-PQ index
(`ondisk_index`) and its catalog of metadata without vectors (`archive_catalog`). Imports `models` (a checkpoint's
identity), `encoders` (the recognised text's types) and `images` (metadata and fingerprint types)."""
