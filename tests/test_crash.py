"""SIGKILL during indexing, many times over: the collection always opens consistent and a re-run completes."""

import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import faiss
import numpy as np

from conftest import FakeEncoder, save_color
from server.images.decode import content_hash, decode, read_file
from server.store.collection_store import CollectionStore

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

CHILD = textwrap.dedent(
    """
    import sys
    sys.path[:0] = [{root!r}, {tests!r}]
    from pathlib import Path
    from conftest import FakeEncoder
    from server.config import Settings
    from server.indexing.indexer import Indexer
    from server.service import ClipSearch

    encoder = FakeEncoder()
    service = ClipSearch(Settings(index_dir=Path({index!r}), model=encoder.model_name), encoder,
                         Indexer(encoder, workers=2, batch_size=4, commit_every=6))
    report = service.index_folder({folder!r}, progress=lambda p: print(p.done, flush=True))
    print("DONE", report.indexed_total, flush=True)
    """
)


def run_indexer(folder: Path, index: Path, kill_after: int | None) -> str | None:
    """Run the indexer in a child process; SIGKILL it after `kill_after` progress lines. Returns the DONE line."""
    code = CHILD.format(root=str(ROOT), tests=str(TESTS), index=str(index), folder=str(folder))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    lines = 0
    try:
        for line in child.stdout:
            if line.startswith("DONE"):
                return line.strip()
            lines += 1
            if kill_after is not None and lines >= kill_after:
                child.send_signal(signal.SIGKILL)
                break
    finally:
        child.stdout.close()
        child.wait(timeout=60)
    return None


def assert_consistent(index: Path) -> int:
    """Catalog ids == FAISS ids, vectors agree, and each up-to-date row's vector describes its own file."""
    collection = CollectionStore(index).open("default", FakeEncoder.model_name)
    try:
        ids, paths, vectors = collection.all_vectors()
        faiss_index = collection._index
        assert faiss_index.ntotal == len(ids) == collection.count()
        assert sorted(faiss.vector_to_array(faiss_index.id_map).tolist()) == ids.tolist()
        encoder = FakeEncoder()
        for image_id, path, vector in zip(ids, paths, vectors, strict=True):
            np.testing.assert_array_equal(faiss_index.reconstruct(int(image_id)), vector)
            entry = collection.find_path(path)
            if path.exists() and content_hash(read_file(path)) == entry.hash:
                expected = encoder.encode_pixels(encoder.preprocess(decode(read_file(path)).image)[np.newaxis])[0]
                np.testing.assert_allclose(vector, expected, atol=1e-6)
        return len(ids)
    finally:
        collection.close()


def mutate(folder: Path, rng: random.Random, step: int) -> None:
    """Rename, delete, rewrite and add a few files, so every run has real work to do."""
    files = sorted(folder.rglob("*.png"))
    rng.shuffle(files)
    for path in files[:10]:
        path.rename(path.with_name(f"r{step}_{path.name}"))
    for path in files[10:15]:
        path.unlink()
    for path in files[15:20]:
        save_color(path, tuple(rng.randrange(256) for _ in range(3)), size=(24, 24), fmt="PNG")
    for i in range(30):
        save_color(
            folder / f"d{i % 3}" / f"new{step}_{i}.png",
            tuple(rng.randrange(256) for _ in range(3)),
            size=(24, 24),
            fmt="PNG",
        )


def test_repeated_sigkill_never_corrupts_the_collection(tmp_path: Path):
    rng = random.Random(1234)
    folder, index = tmp_path / "photos", tmp_path / "index"
    for i in range(120):
        save_color(
            folder / f"d{i % 3}" / f"img{i}.png", tuple(rng.randrange(256) for _ in range(3)), size=(24, 24), fmt="PNG"
        )
    kills = 0
    for step in range(22):
        if step:
            mutate(folder, rng, step)
        done = run_indexer(folder, index, kill_after=rng.randint(1, 12))
        kills += done is None
        if (index / "default" / "manifest.json").exists():
            assert_consistent(index)
    assert kills >= 20
    final = run_indexer(folder, index, kill_after=None)
    on_disk = len(list(folder.rglob("*.png")))
    assert final == f"DONE {on_disk}"
    assert assert_consistent(index) == on_disk
    collection = CollectionStore(index).open("default", FakeEncoder.model_name)
    assert {e.path for e in collection.entries_under(folder).values()} == {p.resolve() for p in folder.rglob("*.png")}
