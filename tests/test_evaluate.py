"""Retrieval metrics (AP, Recall@k) and the folder-label evaluation over a collection's stored vectors."""

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score

from server.collection import Collection, CollectionStore, NewImage
from server.encoder import normalize
from server.errors import GroundTruthError, InvalidArgument
from server.evaluate import average_precision, evaluate_folders, label_of, label_text, ranked_relevance, recall_at

DIM = 8


class LabelEncoder:
    """Text side of a fake model: a text naming a label maps to that label's cluster centre."""

    model_name = "fake-label-encoder"
    dim = DIM
    input_size = 16

    def __init__(self, centres: dict[str, npt.NDArray[np.float32]]) -> None:
        self.centres = centres
        self.texts_encoded: list[str] = []
        self.images_encoded = 0

    def preprocess(self, image: Image.Image) -> npt.NDArray[np.float32]:
        return np.zeros(DIM, dtype=np.float32)

    def encode_pixels(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        self.images_encoded += len(batch)
        return normalize(batch)

    def encode_texts(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.texts_encoded.extend(texts)
        rows = []
        for text in texts:
            # The label named last in the text ("a photo of a b" is "b", not "a"); the longest if they end together.
            found = [
                (m.end(), len(name), name)
                for name in self.centres
                for m in re.finditer(rf"\b{re.escape(name)}\b", text)
            ]
            rows.append(self.centres[max(found)[2]])
        return normalize(np.asarray(rows, dtype=np.float32))


def basis(i: int) -> npt.NDArray[np.float32]:
    vector = np.zeros(DIM, dtype=np.float32)
    vector[i] = 1.0
    return vector


def clustered(counts: dict[str, int], seed: int = 0, noise: float = 0.05) -> dict[Path, npt.NDArray[np.float32]]:
    """/data/<label>/<i>.jpg -> its label's basis vector plus small seeded noise, unit length."""
    rng = np.random.default_rng(seed)
    images: dict[Path, npt.NDArray[np.float32]] = {}
    for c, (label, n) in enumerate(counts.items()):
        for i in range(n):
            images[Path(f"/data/{label}/{i}.jpg")] = basis(c) + noise * rng.standard_normal(DIM).astype(np.float32)
    return images


def centres_for(counts: dict[str, int]) -> dict[str, npt.NDArray[np.float32]]:
    return {label.replace("_", " ").replace("-", " "): basis(c) for c, label in enumerate(counts)}


def build(tmp_path: Path, images: dict[Path, npt.NDArray[np.float32]]) -> Collection:
    collection = CollectionStore(tmp_path / "index").create("eval", LabelEncoder.model_name, DIM)
    with collection.writer() as w:
        for i, (path, vector) in enumerate(images.items()):
            w.add(NewImage(path, 100, 1, f"hash-{i}", 64, 48), normalize(vector[None, :])[0])
    return collection


# --- metrics on hand-computed examples ---------------------------------------------------------------------------


def test_average_precision_is_the_mean_precision_at_each_relevant_rank() -> None:
    ranked = np.array(
        [
            [True, False, True, False, False],  # relevant at ranks 1, 3: (1/1 + 2/3) / 2 = 5/6
            [False, True, False, True, True],  # relevant at ranks 2, 4, 5: (1/2 + 2/4 + 3/5) / 3 = 1.6/3
            [False, False, False, True, False],  # relevant at rank 4 only: (1/4) / 1
            [True, True, True, True, True],  # everything relevant: every precision is 1
            [False, False, False, False, False],  # nothing relevant: defined as 0
        ]
    )
    np.testing.assert_allclose(average_precision(ranked), [5 / 6, 1.6 / 3, 1 / 4, 1.0, 0.0], rtol=0, atol=1e-12)


def test_recall_at_k_is_the_fraction_of_relevant_items_in_the_top_k() -> None:
    ranked = np.array(
        [
            [True, False, True, False, False],  # 2 relevant, at ranks 1 and 3
            [False, True, False, True, True],  # 3 relevant, at ranks 2, 4 and 5
            [False, False, False, False, False],  # none relevant: 0 by definition
        ]
    )
    np.testing.assert_allclose(recall_at(ranked, 1), [1 / 2, 0 / 3, 0.0])
    np.testing.assert_allclose(recall_at(ranked, 2), [1 / 2, 1 / 3, 0.0])
    np.testing.assert_allclose(recall_at(ranked, 3), [2 / 2, 1 / 3, 0.0])
    np.testing.assert_allclose(recall_at(ranked, 4), [2 / 2, 2 / 3, 0.0])
    # k beyond the ranking's length counts everything.
    np.testing.assert_allclose(recall_at(ranked, 50), [1.0, 1.0, 0.0])


def test_ranked_relevance_orders_by_descending_score() -> None:
    scores = np.array([[0.1, 0.9, 0.5, -0.3], [0.7, -0.2, 0.8, 0.0]], dtype=np.float32)
    relevant = np.array([[True, False, True, False], [False, True, False, True]])
    # Row 0 order: items 1, 2, 0, 3; row 1 order: items 2, 0, 3, 1.
    np.testing.assert_array_equal(
        ranked_relevance(scores, relevant), [[False, True, True, False], [False, False, True, True]]
    )


def test_average_precision_matches_sklearn_on_rows_without_ties() -> None:
    rng = np.random.default_rng(42)
    n_queries, n_items = 40, 60
    scores = rng.standard_normal((n_queries, n_items)).astype(np.float32)
    relevant = rng.random((n_queries, n_items)) < rng.uniform(0.05, 0.6, size=(n_queries, 1))
    relevant[np.arange(n_queries), rng.integers(0, n_items, n_queries)] = True  # every query has a relevant item
    assert all(len(np.unique(row)) == n_items for row in scores)  # no ties within a query

    ours = average_precision(ranked_relevance(scores, relevant))
    theirs = [average_precision_score(relevant[q], scores[q]) for q in range(n_queries)]
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)
    assert len(set(np.round(ours, 6))) > 30  # the rows really differ, so the comparison means something


def test_tied_scores_are_ranked_in_item_order() -> None:
    scores = np.array([[0.9, 0.5, 0.5, 0.5], [0.9, 0.5, 0.5, 0.5]], dtype=np.float32)
    relevant = np.array([[True, False, False, True], [True, True, False, False]])
    ranked = ranked_relevance(scores, relevant)
    # Items 1, 2, 3 tie: they keep their order, so each row keeps its item order.
    np.testing.assert_array_equal(ranked, relevant)
    # Row 0: relevant at ranks 1 and 4 -> (1/1 + 2/4) / 2 = 0.75. Row 1: ranks 1 and 2 -> 1.0.
    np.testing.assert_allclose(average_precision(ranked), [0.75, 1.0], rtol=0, atol=1e-12)


def test_long_rows_full_of_ties_keep_item_order_within_each_score() -> None:
    # Small rows are sorted stably by most algorithms anyway; long ones show whether the sort really is stable.
    one_score = np.full((1, 40), 0.5, dtype=np.float32)
    relevant = np.zeros((1, 40), dtype=bool)
    relevant[0, [3, 29]] = True
    # Relevant at ranks 4 and 30: (1/4 + 2/30) / 2.
    np.testing.assert_allclose(average_precision(ranked_relevance(one_score, relevant)), [(1 / 4 + 2 / 30) / 2])

    rng = np.random.default_rng(7)
    scores = rng.integers(0, 3, size=(5, 64)).astype(np.float32)
    relevant = rng.random((5, 64)) < 0.3
    # Python's sorted() is stable: the oracle for "score descending, then item order".
    expected = [[relevant[q, j] for j in sorted(range(64), key=lambda j: -scores[q, j])] for q in range(5)]
    np.testing.assert_array_equal(ranked_relevance(scores, relevant), expected)


# --- labels ------------------------------------------------------------------------------------------------------


def test_label_is_the_parent_folder_name_and_its_text_reads_as_words() -> None:
    assert label_of(Path("/data/sea_lions/001.jpg")) == "sea_lions"
    assert label_text("sea_lions") == "a photo of a sea lions"
    assert label_text("red-panda", "{label}, a kind of animal") == "red panda, a kind of animal"


# --- evaluate_folders --------------------------------------------------------------------------------------------


def test_well_separated_folders_score_perfect_map_and_full_recall_in_both_directions(tmp_path: Path) -> None:
    counts = {"cats": 4, "dogs": 4, "sea_lions": 4}
    collection = build(tmp_path, clustered(counts))
    encoder = LabelEncoder(centres_for(counts))

    report = evaluate_folders(collection, encoder, ks=(1, 3, 4, 5, 10))

    assert (report.collection, report.ground_truth, report.images, report.labels) == ("eval", "folders", 12, 3)
    assert report.text_template == "a photo of a {label}"
    # Text queries, in label order, through the template; stored vectors are used, no image is re-embedded.
    assert encoder.texts_encoded == ["a photo of a cats", "a photo of a dogs", "a photo of a sea lions"]
    assert encoder.images_encoded == 0

    text = report.text_to_image
    assert (text.map, text.queries, text.skipped) == (1.0, 3, 0)
    # 4 relevant images per text query, all ranked first: recall@k = min(k, 4) / 4.
    assert text.recall_at == {1: 0.25, 3: 0.75, 4: 1.0, 5: 1.0, 10: 1.0}

    image = report.image_to_image
    assert (image.map, image.queries, image.skipped) == (1.0, 12, 0)
    # 3 relevant images per image query (the other three of its folder): recall@k = min(k, 3) / 3.
    assert image.recall_at == {1: round(1 / 3, 6), 3: 1.0, 4: 1.0, 5: 1.0, 10: 1.0}


def test_query_image_never_counts_as_its_own_result(tmp_path: Path) -> None:
    # Pairs: each image's only relevant result is the other image of its folder.
    counts = {"a": 2, "b": 2, "c": 2}
    collection = build(tmp_path, clustered(counts, seed=1))

    report = evaluate_folders(collection, LabelEncoder(centres_for(counts)), ks=(1, 2))

    # Were the query its own (best, score 1.0) result, the partner would be second: recall@1 = 0, AP = 1/2.
    assert report.image_to_image.recall_at == {1: 1.0, 2: 1.0}
    assert report.image_to_image.map == 1.0
    assert report.image_to_image.queries == 6


def test_recall_at_1_counts_a_pair_only_when_the_partner_comes_first(tmp_path: Path) -> None:
    def unit(*xs: float) -> npt.NDArray[np.float32]:
        v = np.zeros(DIM, dtype=np.float32)
        v[: len(xs)] = xs
        return v / np.linalg.norm(v)

    a1, a2 = unit(1, 0, 0), unit(0.2, 1, 0)
    b1, b2 = unit(1, 0, 0.2), unit(0.9, 0, 0.5)
    images = {
        Path("/data/a/1.jpg"): a1,
        Path("/data/a/2.jpg"): a2,
        Path("/data/b/1.jpg"): b1,
        Path("/data/b/2.jpg"): b2,
    }
    collection = build(tmp_path, images)
    # Cosines: a1.b1 = .981, a1.b2 = .874, a1.a2 = .196, a2.b1 = .192, a2.b2 = .171, b1.b2 = .952.
    # a1 ranks b1, b2, a2: partner 3rd -> recall@1 0, AP 1/3.   a2 ranks a1, b1, b2: partner 1st -> 1, AP 1.
    # b1 ranks a1, b2, a2: partner 2nd -> recall@1 0, AP 1/2.   b2 ranks b1, a1, a2: partner 1st -> 1, AP 1.
    report = evaluate_folders(collection, LabelEncoder({"a": unit(1, 0, 0), "b": unit(0, 0, 1)}), ks=(1, 2, 3))

    image = report.image_to_image
    assert image.recall_at == {1: 0.5, 2: 0.75, 3: 1.0}  # @2: (0 + 1 + 1 + 1) / 4
    assert image.map == round((1 / 3 + 1 + 1 / 2 + 1) / 4, 6)
    # Text "a" = (1,0,0): ranks a1 (1.0), b1 (.981), b2 (.874), a2 (.196) -> AP (1 + 2/4) / 2 = .75, recall@1 1/2.
    # Text "b" = (0,0,1): ranks b2 (.486), b1 (.196), a1 = a2 (0, tie in item order) -> AP 1, recall@1 1/2.
    text = report.text_to_image
    assert text.map == round((0.75 + 1.0) / 2, 6)
    assert text.recall_at == {1: 0.5, 2: 0.75, 3: 0.75}


def test_labels_with_a_single_image_are_skipped_as_image_queries(tmp_path: Path) -> None:
    counts = {"cats": 3, "dogs": 3, "lonely": 1, "solo": 1}
    collection = build(tmp_path, clustered(counts, seed=2))

    report = evaluate_folders(collection, LabelEncoder(centres_for(counts)), ks=(1, 2))

    assert (report.images, report.labels) == (8, 4)
    assert (report.image_to_image.queries, report.image_to_image.skipped) == (6, 2)
    assert report.image_to_image.map == 1.0
    assert report.image_to_image.recall_at == {1: 0.5, 2: 1.0}
    # A single image is still a fine target for its label's text query.
    assert (report.text_to_image.queries, report.text_to_image.skipped) == (4, 0)
    assert report.text_to_image.map == 1.0


def test_k_larger_than_the_collection_counts_every_relevant_image(tmp_path: Path) -> None:
    counts = {"cats": 3, "dogs": 2}
    collection = build(tmp_path, clustered(counts, seed=3))

    report = evaluate_folders(collection, LabelEncoder(centres_for(counts)), ks=(1, 1000))

    assert report.text_to_image.recall_at == {1: round((1 / 3 + 1 / 2) / 2, 6), 1000: 1.0}
    assert report.image_to_image.recall_at[1000] == 1.0
    assert report.image_to_image.recall_at[1] == round((3 * (1 / 2) + 2 * 1.0) / 5, 6)


def test_mixed_up_folders_score_below_perfect(tmp_path: Path) -> None:
    counts = {"cats": 3, "dogs": 3}
    images = clustered(counts, seed=4)
    # One dog that looks exactly like a cat.
    images[Path("/data/dogs/0.jpg")] = images[Path("/data/cats/0.jpg")].copy()
    collection = build(tmp_path, images)

    report = evaluate_folders(collection, LabelEncoder(centres_for(counts)), ks=(1,))

    assert report.text_to_image.map < 1.0
    assert report.image_to_image.map < 1.0
    assert report.image_to_image.recall_at[1] < 1.0


@pytest.mark.parametrize("n_images", [0, 1])
def test_fewer_than_two_images_cannot_be_evaluated(tmp_path: Path, n_images: int) -> None:
    collection = build(tmp_path, clustered({"cats": n_images}))
    with pytest.raises(GroundTruthError, match=f"holds {n_images} image"):
        evaluate_folders(collection, LabelEncoder({"cats": basis(0)}))


@pytest.mark.parametrize("ks", [(), (0,), (-1,), (5, 0, 1), (3, -2)])
def test_invalid_ks_are_refused(tmp_path: Path, ks: tuple[int, ...]) -> None:
    counts = {"cats": 2, "dogs": 2}
    collection = build(tmp_path, clustered(counts))
    with pytest.raises(InvalidArgument, match="ks must be"):
        evaluate_folders(collection, LabelEncoder(centres_for(counts)), ks=ks)


def test_template_without_a_label_placeholder_is_refused(tmp_path: Path) -> None:
    counts = {"cats": 2, "dogs": 2}
    collection = build(tmp_path, clustered(counts))
    with pytest.raises(InvalidArgument, match=r"\{label\}"):
        evaluate_folders(collection, LabelEncoder(centres_for(counts)), template="a photo")


def test_custom_template_is_used_for_the_text_queries(tmp_path: Path) -> None:
    counts = {"cats": 2, "dogs": 2}
    collection = build(tmp_path, clustered(counts))
    encoder = LabelEncoder(centres_for(counts))

    report = evaluate_folders(collection, encoder, ks=(1,), template="an image of {label} outdoors")

    assert encoder.texts_encoded == ["an image of cats outdoors", "an image of dogs outdoors"]
    assert report.text_template == "an image of {label} outdoors"
    assert report.text_to_image.map == 1.0
