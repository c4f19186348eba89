"""Bringing a folder into a collection: scanning (`scan`), the `Indexer` (`indexer`), jobs on disk (`jobs`) and
folder watching (`watch`). Imports `store`, `encoders`, `images`; jobs reach the service only through a protocol."""
