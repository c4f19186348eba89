"""The one facade both adapters call: settings, the pool of lazily loaded encoders, open collections, and the
operations."""

import contextlib
import gc
import logging
import threading
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from server.config import Settings
from server.encoders.onnx_engine import OnnxEncoder, resolve_engine
from server.encoders.pool import EncoderPool
from server.encoders.protocol import Encoder
from server.encoders.text_recognition import TextRecognizer, shared_recognizer
from server.encoders.torch_engine import TransformersEncoder
from server.errors import ClipSearchError, CollectionMismatch, FileMissing, InvalidArgument, ModelUnavailable
from server.evaluation.evaluate import evaluate as evaluate_collection
from server.images.thumbnails import ThumbnailCache
from server.indexing.indexer import Indexer, ProgressFn
from server.library.duplicate_tasks import DuplicateTasks, Running
from server.limits import (
    DEFAULT_COLLECTION,
    DEFAULT_KS,
    DEFAULT_TEMPLATE,
    DEFAULT_VIEW_SIDE,
    INDEX_TYPES,
    MAX_COMPARED,
    PRECISIONS,
)
from server.models.files import DownloadTracker, find_local
from server.models.identity import model_identity
from server.paths import UNCONFINED, PathGuard
from server.results import (
    ClusterIndexReport,
    CollectionInfo,
    CollectionList,
    DuplicateReport,
    EvaluationReport,
    ImageView,
    IndexReport,
    SearchResponse,
    ThumbnailPage,
)
from server.search.composition import Extras
from server.search.filters import ResultOrder, SearchFilter
from server.search.searcher import Searcher
from server.search.text_ranking import search_texts
from server.store.catalog import read_catalog
from server.store.collection import Collection
from server.store.collection_store import CollectionStore, validate_name
from server.store.manifest import Manifest

if TYPE_CHECKING:
    from server.library.duplicates import DuplicateQuery, Progress

log = logging.getLogger(__name__)

MODEL_HASHES_FILE = "model-hashes.json"  # in the index directory: weight-file hashes behind model identities


class ClipSearch:
    """Image search over named collections. Pass a `guard` to confine file access; the default is unconfined (CLI).

    `downloads` reports a first run's model download; `speaker` is how messages name the program ("this command")."""

    def __init__(
        self,
        settings: Settings,
        encoder: Encoder | None = None,
        indexer: Indexer | None = None,
        downloads: DownloadTracker | None = None,
        speaker: str = "this command",
        encoders: EncoderPool | None = None,
        thumbnails: ThumbnailCache | None = None,
        recognizer: TextRecognizer | None = None,
    ) -> None:
        self.settings = settings
        self.downloads = downloads or DownloadTracker()
        self.encoders = encoders or EncoderPool(self._make_encoder)
        if encoder is not None:
            self.encoders.add(encoder)
        self.indexer = indexer
        # Text in photos: a process-wide PP-OCRv4 unless another is passed; its models load on first use.
        self.recognizer = recognizer if recognizer is not None else shared_recognizer()
        self.thumbnails = thumbnails or ThumbnailCache()
        self.duplicate_tasks = DuplicateTasks()
        self.store = CollectionStore(settings.index_dir, speaker)
        self._open: dict[str, Collection] = {}
        self._opening: dict[str, threading.Lock] = {}  # per collection: models load outside the service's lock
        self._lock = threading.Lock()

    def _make_encoder(self, model: str, precision: str = "fp32") -> Encoder:
        hashes = self.settings.index_dir / MODEL_HASHES_FILE
        reference = TransformersEncoder(model, downloads=self.downloads, hash_cache=hashes)
        if precision != "fp32":  # int8 towers are ONNX Runtime's, whatever runs fp32 here
            if self.settings.engine == "torch":
                raise ModelUnavailable(
                    f"{precision} collections are embedded by the ONNX Runtime engine, and torch was asked for; use "
                    "--engine auto or --engine onnx (or CLIPSEARCH_ENGINE) for them."
                )
            resolve_engine("onnx")  # onnxruntime missing: says so
            return OnnxEncoder(reference, precision=precision)
        if resolve_engine(self.settings.engine) == "torch":
            return reference
        return OnnxEncoder(reference, strict=self.settings.engine == "onnx")

    @property
    def encoder(self) -> Encoder:
        """The encoder of the default model (the one new collections get)."""
        return self.encoders.get(self.settings.model)

    def encoder_for(self, collection: Collection) -> Encoder:
        """The encoder of the model a collection was built with."""
        return self._encoder_of(collection.manifest)

    def warm_up(self) -> None:
        """Load the default model now (e.g. in a background thread) so the first query does not wait; failures are
        left for the first call that needs the model to report."""
        try:
            encoder = self.encoder
            _ = encoder.dim
            if isinstance(encoder, OnnxEncoder):
                encoder.load_text_tower()
        except ClipSearchError as exc:
            log.warning("model not loaded in the background: %s", exc)

    def collection(
        self,
        name: str,
        create: bool = False,
        model: str | None = None,
        precision: str | None = None,
        for_text: bool = False,
    ) -> Collection:
        """An open collection, cached for the life of the service; `create` makes it if missing, with `model` (else
        the default model) and `precision` (else fp32). An existing collection keeps its own model and precision:
        asking it for others is refused. With `for_text` (a text search comes next), the model's text tower loads
        while the collection's index is read.

        Finding, downloading or loading a model happens outside the service's lock, so a model loading for one
        collection never holds up the searches of the others."""
        validate_name(name)
        with self._lock:
            opening = self._opening.setdefault(name, threading.Lock())
        with opening:  # one opener per collection: a catalog is created or upgraded once
            with self._lock:
                opened = self._open.get(name)
            if opened is not None:
                self._check_asked(name, opened.manifest, model, precision)
                return opened
            if not create or self.store.exists(name):
                manifest = self.store.read_manifest(name)  # a missing collection is said before any model work
                self._check_asked(name, manifest, model, precision)
                encoder = self._encoder_of(manifest)
                loading = _load_text_tower_meanwhile(encoder) if for_text else None
                try:
                    family = _family_key(encoder) if manifest.family is None else None  # read once, when missing
                    made = self.store.open(name, manifest.model, identity=encoder.model_identity, family=family)
                finally:
                    if loading is not None:
                        loading.join()
            else:
                chosen = model or self.settings.model  # recorded as asked, even if the pool shares another name's copy
                chosen_precision = _valid_precision(precision or "fp32")
                encoder = self.encoders.get(chosen, chosen_precision)
                made = self.store.create(
                    name,
                    chosen,
                    encoder.dim,
                    identity=encoder.model_identity,
                    precision=chosen_precision,
                    family=_family_key(encoder),
                )
            with self._lock:
                self._open[name] = made
            _settle_heap()
            return made

    def _encoder_of(self, manifest: Manifest) -> Encoder:
        """The collection's model at its precision, by its recorded name; when that name no longer leads to its
        files (a folder moved), the default model if it is the same checkpoint."""
        try:
            return self.encoders.get(manifest.model, manifest.precision)
        except ModelUnavailable:
            default = self.encoders.get(self.settings.model, manifest.precision)
            if manifest.model_identity is None or default.model_identity != manifest.model_identity:
                raise
            self.encoders.add(default, manifest.model)
            return default

    def check_model(self, collection: str, model: str | None, precision: str | None = None) -> None:
        """Refuse `model` or `precision` for an existing collection built with others; downloads nothing to tell."""
        if precision is not None:
            _valid_precision(precision)
        if self.store.exists(collection):
            self._check_asked(collection, self.store.read_manifest(collection), model, precision)

    def _check_asked(self, collection: str, manifest: Manifest, model: str | None, precision: str | None) -> None:
        if model is not None:
            self._check_model(collection, manifest, model)
        if precision is not None and precision != manifest.precision:
            raise CollectionMismatch(
                f"Collection '{collection}' holds {manifest.precision} vectors; it cannot take {precision} ones (a "
                "collection's vectors all come from one precision). Index into a new collection name for "
                f"{precision}, e.g. '{collection}-{precision}'."
            )

    def _check_model(self, collection: str, manifest: Manifest, model: str) -> None:
        if model == manifest.model:
            return
        local = find_local(model)
        if local is not None and manifest.model_identity is not None:
            hashes = self.settings.index_dir / MODEL_HASHES_FILE
            if model_identity(local.folder, hashes) == manifest.model_identity:
                return  # another name for the same checkpoint
        raise CollectionMismatch(
            f"Collection '{collection}' was built with model '{manifest.model}'; it cannot take '{model}' (vectors "
            "of different models do not compare). Index into a new collection name to use that model, e.g. "
            f"'{collection}-{_short_model(model)}'."
        )

    def _indexer(self, encoder: Encoder) -> Indexer:
        if self.indexer is None:
            return Indexer(encoder, recognizer=self.recognizer)
        return self.indexer if self.indexer.encoder is encoder else self.indexer.using(encoder)

    def index_folder(
        self,
        folder: str | Path,
        collection: str = DEFAULT_COLLECTION,
        recursive: bool = True,
        remove_missing: bool = True,
        guard: PathGuard = UNCONFINED,
        progress: ProgressFn | None = None,
        index_type: str | None = None,
        cancel: threading.Event | None = None,
        model: str | None = None,
        precision: str | None = None,
        ocr: str | None = None,
    ) -> IndexReport:
        """Index a folder's images into a collection, embedding only new or changed files, then read the text in
        those not read yet.

        `index_type` ('auto', 'flat', 'ivf') changes the collection's index choice; None keeps it. Setting `cancel`
        stops the run after its current batch (`IndexingCancelled`, with what was committed). `model` builds a new
        collection with that model (default: the settings' model) and `precision` ('fp32', the default, or 'int8');
        an existing one keeps its own. `ocr` ('auto': text read after a cheap first pass, 'on': in every image,
        'off') changes the collection's text reading; None keeps it (new collections: 'auto')."""
        if index_type is not None and index_type not in INDEX_TYPES:
            raise InvalidArgument(f"index_type must be one of {', '.join(INDEX_TYPES)}, got {index_type!r}.")
        path = guard.check(folder)
        if not path.is_dir():
            raise FileMissing(f"Folder '{folder}' does not exist or is not a folder.")
        target = self.collection(collection, create=True, model=model, precision=precision)
        return self._indexer(self.encoder_for(target)).run(
            target,
            path,
            recursive=recursive,
            remove_missing=remove_missing,
            guard=guard,
            exclude=[self.settings.index_dir],
            progress=progress,
            index_type=index_type,
            cancel=cancel,
            ocr=ocr,
        )

    def cluster_index(
        self,
        source: str | Path,
        collection: str,
        address: str | None = None,
        s3_endpoint: str | None = None,
        s3_region: str | None = None,
        s3_anonymous: bool = False,
        cpu_only: bool = False,
    ) -> ClusterIndexReport:
        """Embed a folder every node sees, or an S3 prefix (`s3://bucket/prefix`; credentials from AWS_ACCESS_KEY_ID
        and AWS_SECRET_ACCESS_KEY), into an archive of Parquet shards on a Ray cluster (`address`; None: a local
        instance), with the settings' model (torch on the cluster's GPUs unless `cpu_only`, else ONNX Runtime); only
        objects not in a finished shard. Then the archive's on-disk index is (re)built if its contents changed."""
        from server.indexing.cluster import ClusterOptions, EncoderRecipe, cluster_index
        from server.indexing.sources import open_source

        recipe = EncoderRecipe(self.settings.model, hash_cache=self.settings.index_dir / MODEL_HASHES_FILE)
        index_dir = self.settings.index_dir
        where = open_source(str(source), [index_dir], s3_endpoint, s3_region, s3_anonymous)
        options = ClusterOptions(use_gpus=not cpu_only)
        return cluster_index(where, collection, index_dir, recipe, address, options=options)

    def search_text(
        self,
        query: str,
        k: int = 10,
        collection: str = DEFAULT_COLLECTION,
        filters: SearchFilter | None = None,
        order: ResultOrder | None = None,
        extras: Extras | None = None,
        guard: PathGuard = UNCONFINED,
    ) -> SearchResponse:
        """Text search; `extras` composes it with more texts and images (their paths checked by `guard`)."""
        target = self.collection(collection, for_text=True)
        return Searcher(self.encoder_for(target)).by_text(target, query, k, filters, order, extras, guard)

    def search_image(
        self,
        image_path: str | Path,
        k: int = 10,
        collection: str = DEFAULT_COLLECTION,
        guard: PathGuard = UNCONFINED,
        filters: SearchFilter | None = None,
        order: ResultOrder | None = None,
        extras: Extras | None = None,
        time_seconds: float | None = None,
    ) -> SearchResponse:
        """Images like an example image, or like a moment of a video (`time_seconds`)."""
        path = guard.check(image_path)
        target = self.collection(collection)
        searcher = Searcher(self.encoder_for(target))
        return searcher.by_image(target, path, k, filters, order, extras, guard, time_seconds)

    def make_filter(
        self,
        collection: str = DEFAULT_COLLECTION,
        folder: str | Path | None = None,
        taken_after: str | None = None,
        taken_before: str | None = None,
        near: tuple[float, float] | None = None,
        radius_km: float | None = None,
        camera: str | None = None,
        guard: PathGuard = UNCONFINED,
        text: str | None = None,
        media: str = "all",
    ) -> SearchFilter:
        """Check a search's filters: dates, place, camera, words of the photo's recognised text, photos or videos,
        and a folder that is allowed and indexed."""
        path = self._collection_folder(collection, folder, guard) if folder is not None else None
        return SearchFilter.parse(path, taken_after, taken_before, near, radius_km, camera, text, media)

    def search_text_in_images(
        self,
        query: str,
        k: int = 10,
        collection: str = DEFAULT_COLLECTION,
        filters: SearchFilter | None = None,
        order: ResultOrder | None = None,
    ) -> SearchResponse:
        """Images ranked by how well the text recognised in them matches `query` (search/text_ranking.py); runs no
        model."""
        return search_texts(self.collection(collection), query, k, filters, order)

    def _collection_folder(self, collection: str, folder: str | Path, guard: PathGuard) -> Path:
        """A folder that narrows a search or a duplicates report: allowed, existing and holding images of the
        collection; refused otherwise, naming the collection's folders, so an empty answer never hides a typo."""
        path = guard.check(folder)
        target = self.collection(collection)
        indexed = target.indexed_folders()
        known = ", ".join(str(f) for f in indexed) or "none yet"
        if not any(path.is_relative_to(f) or f.is_relative_to(path) for f in indexed):
            raise InvalidArgument(
                f"Folder '{folder}' is not part of collection '{collection}' (its indexed folders: {known})."
            )
        if not path.is_dir():
            raise InvalidArgument(
                f"Folder '{folder}' does not exist; collection '{collection}' holds images under {known}."
            )
        if not target.holds_images_under(path):
            raise InvalidArgument(
                f"Folder '{folder}' holds no image of collection '{collection}' (its indexed folders: {known}); "
                "index it first if it is new."
            )
        return path

    def evaluate(
        self,
        collection: str = DEFAULT_COLLECTION,
        ground_truth: str = "folders",
        ks: Sequence[int] = DEFAULT_KS,
        template: str = DEFAULT_TEMPLATE,
        guard: PathGuard = UNCONFINED,
        report_dir: Path | None = None,
        plots: bool = False,
    ) -> EvaluationReport:
        """Measure retrieval on a collection; with `report_dir`, also write report.json/.md (and plots)."""
        target = self.collection(collection)
        evaluation = evaluate_collection(target, self.encoder_for(target), ground_truth, ks, template, guard)
        if report_dir is not None:
            from server.evaluation.report import write_report

            write_report(evaluation, report_dir, plots)
        return evaluation.report

    def compare(
        self,
        collections: Sequence[str],
        ground_truth: str = "folders",
        ks: Sequence[int] = DEFAULT_KS,
        template: str = DEFAULT_TEMPLATE,
        guard: PathGuard = UNCONFINED,
        report_dir: Path | None = None,
        plots: bool = False,
    ) -> EvaluationReport:
        """Evaluate collections of the same images (one per model) with the same ground truth, side by side, each
        model's speed measured now; the report is the first collection's, with `comparison` holding them all."""
        from server.evaluation.compare import check_comparable, compared

        targets = [self.collection(name) for name in collections[: MAX_COMPARED + 1]]
        check_comparable(targets)
        evaluations = []
        rows = []
        for target in targets:
            encoder = self.encoder_for(target)
            evaluation = evaluate_collection(target, encoder, ground_truth, ks, template, guard)
            evaluations.append(evaluation)
            rows.append(compared(target, encoder, evaluation, guard))
        update: dict[str, object] = {"comparison": rows, "report_dir": None, "plots": []}
        if report_dir is not None:
            from server.evaluation.report import write_comparison

            written = write_comparison(evaluations, rows, report_dir, plots)
            update.update(report_dir=str(report_dir), plots=[str(p) for p in written])
        return evaluations[0].report.model_copy(update=update)

    def evaluation_dir(self, collection: str) -> Path:
        """Where the MCP tool keeps a collection's written evaluations: inside the index directory."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return self.store.index_dir / validate_name(collection) / "evaluations" / stamp

    def list_collections(self) -> CollectionList:
        infos = []
        for name in self.store.names():
            manifest = self.store.read_manifest(name)
            with self._lock:
                cached = self._open.get(name)
            images = cached.count() if cached else _count_rows(self.store.index_dir / name)
            infos.append(
                CollectionInfo(
                    name=name,
                    images=images,
                    model=manifest.model,
                    model_identity=manifest.model_identity,
                    precision=manifest.precision,
                    family=manifest.family,
                    dim=manifest.dim,
                    index_type=manifest.index_type,
                )
            )
        return CollectionList(index_dir=str(self.store.index_dir), collections=infos)

    def find_duplicates(
        self,
        collection: str = DEFAULT_COLLECTION,
        query: "DuplicateQuery | None" = None,
        guard: PathGuard = UNCONFINED,
        wait_seconds: float | None = None,
        progress: "Progress | None" = None,
    ) -> DuplicateReport:
        """Groups of exact and near-duplicate images in a collection (or under one of its folders), with a suggested
        keeper each; reads only the catalog and the index, changes nothing. Computed once per collection commit
        and remembered (paging is free); a computation longer than `wait_seconds` goes on in the background and
        this answers with its state (None: wait until done)."""
        from server.library.duplicates import DuplicateQuery, page_of, running_report

        query = query or DuplicateQuery()
        if query.folder is not None:
            folder = self._collection_folder(collection, query.folder, guard)
            query = replace(query, folder=folder)
        target = self.collection(collection)
        found = self.duplicate_tasks.groups(target, query, wait_seconds, progress)
        if isinstance(found, Running):
            return running_report(target.name, target.generation, query, found)
        return page_of(target, found, query)

    def view_image(
        self,
        path: str | Path,
        max_side: int = DEFAULT_VIEW_SIDE,
        guard: PathGuard = UNCONFINED,
        time_seconds: float | None = None,
    ) -> tuple[bytes, ImageView]:
        """One image as an upright JPEG of at most `max_side` px, with its metadata (a video: its frame at
        `time_seconds`); read only if the guard allows its path."""
        from server.library.photo_view import view_image

        checked = guard.check(path)
        return view_image(checked, max_side, self.store.index_dir, self.store.names(), time_seconds)

    def thumbnail(self, path: str | Path, guard: PathGuard = UNCONFINED) -> bytes:
        """A ≤256 px JPEG of an image, read only if the guard allows its path."""
        checked = guard.check(path)
        return self.thumbnails.get(checked)

    def thumbnail_page(
        self,
        paths: Sequence[str],
        side: int,
        guard: PathGuard = UNCONFINED,
        times: Sequence[float | None] | None = None,
    ) -> ThumbnailPage:
        """Thumbnails of several images for a gallery (a video's at its moment in `times`), each read only if the
        guard allows its path."""
        return self.thumbnails.page(paths, side, guard.check, times)


def _settle_heap() -> None:
    """What is alive once a collection is open (modules, the model, the index and their wrappers) lives as long as
    the process: it is moved out of the garbage collector's view, so the collector's full passes stop scanning it
    during searches. At a million images those passes set the filtered searches' tail: p95 33 and 79 ms against
    p50 1.4 and 8.1 ms, and 3.8 and 9.9 ms once frozen (bench.filters, gc_frozen). Freezing takes no time (no
    collection first: a one-shot command must not pay for one)."""
    gc.freeze()


def _load_text_tower_meanwhile(encoder: Encoder) -> threading.Thread | None:
    """Start loading an ONNX text tower in a thread: it and reading a collection's index are both mostly file reads
    outside the GIL, so a search from a fresh process waits for the longer of the two, not both. A failure is left
    for the search itself to report."""
    if not isinstance(encoder, OnnxEncoder):
        return None

    def load() -> None:
        with contextlib.suppress(ClipSearchError):
            encoder.load_text_tower()

    thread = threading.Thread(target=load, name="clipsearch-text-tower", daemon=True)
    thread.start()
    return thread


def _family_key(encoder: Encoder) -> str | None:
    """The family of the encoder's checkpoint, read from its files (cheap: no weights load); None for an encoder
    that has none to tell (a test's fake)."""
    return getattr(encoder, "family_key", None)


def _valid_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise InvalidArgument(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    return precision


def _short_model(model: str) -> str:
    """A collection-name-safe short form of a model name (its last path part)."""
    tail = model.rstrip("/").rsplit("/", 1)[-1]
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in tail)[:40] or "model"


def _count_rows(folder: Path) -> int:
    rows = read_catalog(folder, "SELECT COUNT(*) FROM images")
    return int(rows[0][0]) if rows else 0
