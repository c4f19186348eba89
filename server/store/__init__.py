"""The persisted collection: the SQLite catalog's schema and migrations (`schema`), the manifest (`manifest`), the
FAISS index (`faiss_index`), `CollectionStore`/`Collection` (`collection`) and its batched writer (`writer`)."""
