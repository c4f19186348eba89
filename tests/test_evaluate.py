"""Retrieval metrics, ground truth from folders or JSON, and the evaluation over a collection's stored vectors."""

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score

from conftest import FakeEncoder, save_color
from server.encoders.protocol import normalize
from server.errors import GroundTruthError, InvalidArgument, PathNotAllowed
from server.evaluation.evaluate import Direction, Evaluation, evaluate
from server.evaluation.ground_truth import folder_label, label_text
from server.evaluation.metrics import rank_order, ranked_relevance, ranking_metrics
from server.paths import PathGuard
from server.service import ClipSearch
from server.store.collection import Collection
from server.store.collection_store import CollectionStore
from server.store.writer import NewImage

DIM = 8


class LabelEncoder(FakeEncoder):
    """Text side of a fake model: a text naming a label maps to that label's cluster centre (images as the
    colour fake does: counted, normalised)."""

    model_name = "fake-label-encoder"
    model_identity = "sha256:" + "1a" * 32
    dim = DIM

    def __init__(self, centres: dict[str, npt.NDArray[np.float32]]) -> None:
        super().__init__()
        self.centres = centres

    def preprocess(self, image: Image.Image) -> npt.NDArray[np.float32]:
        return np.zeros(DIM, dtype=np.float32)

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


def build(
    tmp_path: Path, images: dict[Path, npt.NDArray[np.float32]], roots: Sequence[Path] = (Path("/data"),)
) -> Collection:
    """A collection holding these vectors, as if an indexing run had covered `roots`."""
    collection = CollectionStore(tmp_path / "index").create("eval", LabelEncoder.model_name, DIM)
    with collection.writer() as w:
        for root in roots:
            w.record_folder(root)
        for i, (path, vector) in enumerate(images.items()):
            w.add(NewImage(path, 100, 1, f"hash-{i}", 64, 48), normalize(vector[None, :])[0])
    return collection


def average_precision(ranked: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    return ranking_metrics(ranked, [1]).ap


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


def test_relevant_items_missing_from_the_ranking_lower_average_precision_and_recall() -> None:
    ranked = np.array([[True, False, True, False], [False, False, False, False]])
    # Row 0: 4 relevant in all, 2 ranked (1 and 3): AP (1/1 + 2/3) / 4, recall@4 2/4. Row 1: 3 relevant, none ranked.
    metrics = ranking_metrics(ranked, [1, 4], n_relevant=np.array([4, 3]))
    np.testing.assert_allclose(metrics.ap, [(1 + 2 / 3) / 4, 0.0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(metrics.recall[4], [0.5, 0.0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(metrics.rr, [1.0, 0.0])
    # nDCG@4's ideal puts 4 relevant items in the top 4, not just the 2 that were ranked.
    ideal = sum(1 / np.log2(r + 1) for r in range(1, 5))
    np.testing.assert_allclose(metrics.ndcg[4], [(1 + 1 / np.log2(4)) / ideal, 0.0], rtol=0, atol=1e-12)


def test_recall_at_k_is_the_fraction_of_relevant_items_in_the_top_k() -> None:
    ranked = np.array(
        [
            [True, False, True, False, False],  # 2 relevant, at ranks 1 and 3
            [False, True, False, True, True],  # 3 relevant, at ranks 2, 4 and 5
            [False, False, False, False, False],  # none relevant: 0 by definition
        ]
    )
    recall = ranking_metrics(ranked, [1, 2, 3, 4, 50]).recall
    np.testing.assert_allclose(recall[1], [1 / 2, 0 / 3, 0.0])
    np.testing.assert_allclose(recall[2], [1 / 2, 1 / 3, 0.0])
    np.testing.assert_allclose(recall[3], [2 / 2, 1 / 3, 0.0])
    np.testing.assert_allclose(recall[4], [2 / 2, 2 / 3, 0.0])
    # k beyond the ranking's length counts everything.
    np.testing.assert_allclose(recall[50], [1.0, 1.0, 0.0])


def test_reciprocal_rank_precision_hit_rate_and_ndcg_on_a_hand_computed_ranking() -> None:
    ranked = np.array([[False, True, False, True, True], [False, False, False, False, False]])
    metrics = ranking_metrics(ranked, [1, 2, 10])
    np.testing.assert_allclose(metrics.rr, [1 / 2, 0.0])
    np.testing.assert_allclose(metrics.precision[1], [0.0, 0.0])
    np.testing.assert_allclose(metrics.precision[2], [1 / 2, 0.0])
    np.testing.assert_allclose(metrics.precision[10], [3 / 10, 0.0])  # divided by k, even past the ranking's end
    np.testing.assert_allclose(metrics.hit_rate[1], [0.0, 0.0])
    np.testing.assert_allclose(metrics.hit_rate[2], [1.0, 0.0])
    # nDCG@2: DCG 1/log2(3) over the ideal 1 + 1/log2(3). nDCG@10: ranks 2, 4, 5 over ranks 1, 2, 3.
    np.testing.assert_allclose(metrics.ndcg[2], [(1 / np.log2(3)) / (1 + 1 / np.log2(3)), 0.0], rtol=0, atol=1e-12)
    dcg = 1 / np.log2(3) + 1 / np.log2(5) + 1 / np.log2(6)
    ideal = 1 + 1 / np.log2(3) + 1 / np.log2(4)
    np.testing.assert_allclose(metrics.ndcg[10], [dcg / ideal, 0.0], rtol=0, atol=1e-12)


def test_ranked_relevance_orders_by_descending_score() -> None:
    scores = np.array([[0.1, 0.9, 0.5, -0.3], [0.7, -0.2, 0.8, 0.0]], dtype=np.float32)
    relevant = np.array([[True, False, True, False], [False, True, False, True]])
    # Row 0 order: items 1, 2, 0, 3; row 1 order: items 2, 0, 3, 1.
    np.testing.assert_array_equal(rank_order(scores), [[1, 2, 0, 3], [2, 0, 3, 1]])
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
    expected_order = [sorted(range(64), key=lambda j, q=q: -scores[q, j]) for q in range(5)]
    np.testing.assert_array_equal(rank_order(scores), expected_order)
    expected = [[relevant[q, j] for j in expected_order[q]] for q in range(5)]
    np.testing.assert_array_equal(ranked_relevance(scores, relevant), expected)


# --- labels ------------------------------------------------------------------------------------------------------


def test_label_is_the_parent_folder_relative_to_the_outermost_indexed_folder() -> None:
    roots = [Path("/data"), Path("/data/a")]  # outermost first, as Collection.indexed_folders() gives them
    assert folder_label(Path("/data/sea_lions/001.jpg"), roots) == "sea_lions"
    assert folder_label(Path("/data/a/x/1.jpg"), roots) == "a/x"
    assert folder_label(Path("/data/b/x/2.jpg"), roots) == "b/x"
    assert folder_label(Path("/data/loose.jpg"), roots) is None
    # An image under no recorded folder (a catalog from before folders were recorded) keeps its parent's name.
    assert folder_label(Path("/elsewhere/cats/1.jpg"), roots) == "cats"


def test_label_text_reads_the_last_folder_name_as_words() -> None:
    assert label_text("sea_lions") == "a photo of a sea lions"
    assert label_text("animals/red-panda", "{label}, a kind of animal") == "red panda, a kind of animal"
    assert label_text("a/x") == label_text("b/x") == "a photo of a x"


# --- folder ground truth over a collection -----------------------------------------------------------------------


def test_well_separated_folders_score_perfect_map_and_full_recall_in_both_directions(tmp_path: Path) -> None:
    counts = {"cats": 4, "dogs": 4, "sea_lions": 4}
    collection = build(tmp_path, clustered(counts))
    encoder = LabelEncoder(centres_for(counts))

    report = evaluate(collection, encoder, ks=(1, 3, 4, 5, 10)).report

    assert (report.collection, report.ground_truth, report.images, report.labels) == ("eval", "folders", 12, 3)
    assert report.text_template == "a photo of a {label}"
    assert (report.unknown_paths, report.unknown_count, report.notes) == ([], 0, [])
    # Text queries, in label order, through the template; stored vectors are used, no image is re-embedded.
    assert encoder.texts_encoded == ["a photo of a cats", "a photo of a dogs", "a photo of a sea lions"]
    assert encoder.images_encoded == 0

    text = report.text_to_image
    assert (text.map, text.mrr, text.queries, text.skipped) == (1.0, 1.0, 3, 0)
    # 4 relevant images per text query, all ranked first: recall@k = min(k, 4) / 4.
    assert text.recall_at == {1: 0.25, 3: 0.75, 4: 1.0, 5: 1.0, 10: 1.0}
    assert text.precision_at == {1: 1.0, 3: 1.0, 4: 1.0, 5: 0.8, 10: 0.4}
    assert text.ndcg_at == {1: 1.0, 3: 1.0, 4: 1.0, 5: 1.0, 10: 1.0}

    image = report.image_to_image
    assert (image.map, image.queries, image.skipped) == (1.0, 12, 0)
    # 3 relevant images per image query (the other three of its folder): recall@k = min(k, 3) / 3.
    assert image.recall_at == {1: round(1 / 3, 6), 3: 1.0, 4: 1.0, 5: 1.0, 10: 1.0}
    assert image.hit_rate_at == {1: 1.0, 3: 1.0, 4: 1.0, 5: 1.0, 10: 1.0}


def test_query_image_never_counts_as_its_own_result(tmp_path: Path) -> None:
    # Pairs: each image's only relevant result is the other image of its folder.
    counts = {"a": 2, "b": 2, "c": 2}
    images = clustered(counts, seed=1)
    collection = build(tmp_path, images)

    evaluation = evaluate(collection, LabelEncoder(centres_for(counts)), ks=(1, 2))

    # Were the query its own (best, score 1.0) result, the partner would be second: recall@1 = 0, AP = 1/2.
    image = evaluation.report.image_to_image
    assert image.recall_at == {1: 1.0, 2: 1.0}
    assert image.map == 1.0
    assert image.queries == 6
    for row in evaluation.image_to_image.per_query:
        assert row.relevant == 1 and row.relevant_ranks == [1]
        assert row.query not in row.top
        assert Path(row.top[0]).parent == Path(row.query).parent  # the partner comes first
    # The query's own row sorts last with score -inf: it is never among the retrieved top results.
    assert np.isfinite(evaluation.image_to_image.top_scores).all()


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
    evaluation = evaluate(collection, LabelEncoder({"a": unit(1, 0, 0), "b": unit(0, 0, 1)}), ks=(1, 2, 3))

    image = evaluation.report.image_to_image
    assert image.recall_at == {1: 0.5, 2: 0.75, 3: 1.0}  # @2: (0 + 1 + 1 + 1) / 4
    assert image.map == round((1 / 3 + 1 + 1 / 2 + 1) / 4, 6)
    assert image.mrr == round((1 / 3 + 1 + 1 / 2 + 1) / 4, 6)  # one relevant item each: RR equals AP
    # Worst first: a1 (AP 1/3, partner at rank 3), then b1 (1/2), then the two perfect queries in name order.
    per_query = evaluation.image_to_image.per_query
    assert [(r.query, r.relevant_ranks) for r in per_query] == [
        ("/data/a/1.jpg", [3]),
        ("/data/b/1.jpg", [2]),
        ("/data/a/2.jpg", [1]),
        ("/data/b/2.jpg", [1]),
    ]
    assert per_query[0].top == ["/data/b/1.jpg", "/data/b/2.jpg", "/data/a/2.jpg"]
    # Text "a" = (1,0,0): ranks a1 (1.0), b1 (.981), b2 (.874), a2 (.196) -> AP (1 + 2/4) / 2 = .75, recall@1 1/2.
    # Text "b" = (0,0,1): ranks b2 (.486), b1 (.196), a1 = a2 (0, tie in item order) -> AP 1, recall@1 1/2.
    text = evaluation.report.text_to_image
    assert text.map == round((0.75 + 1.0) / 2, 6)
    assert text.recall_at == {1: 0.5, 2: 0.75, 3: 0.75}


def test_labels_with_a_single_image_are_skipped_as_image_queries(tmp_path: Path) -> None:
    counts = {"cats": 3, "dogs": 3, "lonely": 1, "solo": 1}
    collection = build(tmp_path, clustered(counts, seed=2))

    report = evaluate(collection, LabelEncoder(centres_for(counts)), ks=(1, 2)).report

    assert (report.images, report.labels) == (8, 4)
    assert (report.image_to_image.queries, report.image_to_image.skipped) == (6, 2)
    assert report.notes == [
        "/data/lonely/0.jpg: the only image labelled 'lonely'",
        "/data/solo/0.jpg: the only image labelled 'solo'",
    ]
    assert report.image_to_image.map == 1.0
    assert report.image_to_image.recall_at == {1: 0.5, 2: 1.0}
    # A single image is still a fine target for its label's text query.
    assert (report.text_to_image.queries, report.text_to_image.skipped) == (4, 0)
    assert report.text_to_image.map == 1.0


def test_folder_labels_are_relative_to_the_indexed_folder_recorded_in_the_catalog(tmp_path: Path) -> None:
    images = {
        Path("/data/a/x/1.jpg"): basis(0),
        Path("/data/a/x/2.jpg"): basis(0) + 0.05 * basis(4),
        Path("/data/b/x/1.jpg"): basis(1),
        Path("/data/b/x/2.jpg"): basis(1) + 0.05 * basis(4),
        Path("/data/b/sea_lions/1.jpg"): basis(2),
        Path("/data/b/sea_lions/2.jpg"): basis(2) + 0.05 * basis(4),
        Path("/data/loose.jpg"): basis(3),
    }
    # /data/b was indexed on its own too; labels stay relative to the outermost folder, /data.
    collection = build(tmp_path, images, roots=[Path("/data/b"), Path("/data")])
    encoder = LabelEncoder({"x": basis(0), "sea lions": basis(2)})

    evaluation = evaluate(collection, encoder, ks=(1, 2))

    assert evaluation.truth.labels == ["a/x", "a/x", "b/x", "b/x", "b/sea_lions", "b/sea_lions", None]
    assert evaluation.report.labels == 3
    # One text query per label, from its last part, in label order; "a/x" and "b/x" stay distinct labels.
    assert encoder.texts_encoded == ["a photo of a x", "a photo of a sea lions", "a photo of a x"]
    assert [q.relevant for q in evaluation.truth.text_queries] == [[0, 1], [4, 5], [2, 3]]
    # Each image query's one relevant image is its folder partner: a/x and b/x are not merged into "x".
    image = evaluation.report.image_to_image
    assert (image.queries, image.skipped, image.map) == (6, 1, 1.0)
    assert all(r.relevant == 1 for r in evaluation.image_to_image.per_query)
    # The image directly in the indexed folder has no label: not an image query, and the reason is noted.
    assert evaluation.report.notes == ["/data/loose.jpg: not inside a subfolder, so it has no label"]
    assert "/data/loose.jpg" not in [r.query for r in evaluation.image_to_image.per_query]


def test_indexing_a_parent_folder_makes_labels_include_the_subfolder_path(
    fake_service: ClipSearch, fake_encoder: FakeEncoder, color_folder: Path
) -> None:
    fake_service.index_folder(color_folder.parent, collection="colors")  # color_folder is <tmp>/photos

    evaluation = evaluate(fake_service.collection("colors"), fake_encoder, ks=(1, 3))

    assert sorted(set(evaluation.truth.labels)) == [f"photos/{c}" for c in ("blue", "green", "red", "white", "yellow")]
    assert fake_encoder.texts_encoded[-5:] == [f"a photo of a {c}" for c in ("blue", "green", "red", "white", "yellow")]
    assert evaluation.report.text_to_image.map == 1.0
    assert evaluation.report.image_to_image.map == 1.0


def test_k_larger_than_the_collection_counts_every_relevant_image(tmp_path: Path) -> None:
    counts = {"cats": 3, "dogs": 2}
    collection = build(tmp_path, clustered(counts, seed=3))

    evaluation = evaluate(collection, LabelEncoder(centres_for(counts)), ks=(1, 1000))
    report = evaluation.report

    assert report.text_to_image.recall_at == {1: round((1 / 3 + 1 / 2) / 2, 6), 1000: 1.0}
    assert report.image_to_image.recall_at[1000] == 1.0
    assert report.image_to_image.recall_at[1] == round((3 * (1 / 2) + 2 * 1.0) / 5, 6)
    assert report.image_to_image.precision_at[1000] == round((3 * 2 + 2 * 1) / 5 / 1000, 6)
    # An image query's top lists every other image, never itself.
    for row in evaluation.image_to_image.per_query:
        assert sorted(row.top) == sorted(str(p) for p in clustered(counts) if str(p) != row.query)


def test_text_query_top_lists_every_image_when_k_exceeds_the_collection(tmp_path: Path) -> None:
    counts = {"cats": 3, "dogs": 2}
    collection = build(tmp_path, clustered(counts, seed=3))

    evaluation = evaluate(collection, LabelEncoder(centres_for(counts)), ks=(1, 1000))

    for row in evaluation.text_to_image.per_query:
        assert sorted(row.top) == sorted(str(p) for p in clustered(counts))


def test_mixed_up_folders_score_below_perfect(tmp_path: Path) -> None:
    counts = {"cats": 3, "dogs": 3}
    images = clustered(counts, seed=4)
    # One dog that looks exactly like a cat.
    images[Path("/data/dogs/0.jpg")] = images[Path("/data/cats/0.jpg")].copy()
    collection = build(tmp_path, images)

    report = evaluate(collection, LabelEncoder(centres_for(counts)), ks=(1,)).report

    assert report.text_to_image.map < 1.0
    assert report.image_to_image.map < 1.0
    assert report.image_to_image.recall_at[1] < 1.0


@pytest.mark.parametrize("n_images", [0, 1])
def test_fewer_than_two_images_cannot_be_evaluated(tmp_path: Path, n_images: int) -> None:
    collection = build(tmp_path, clustered({"cats": n_images}))
    with pytest.raises(GroundTruthError, match=f"holds {n_images} image"):
        evaluate(collection, LabelEncoder({"cats": basis(0)}))


def test_images_outside_any_subfolder_give_no_ground_truth(tmp_path: Path) -> None:
    collection = build(tmp_path, {Path("/data/1.jpg"): basis(0), Path("/data/2.jpg"): basis(1)})
    with pytest.raises(GroundTruthError, match="needs images in subfolders"):
        evaluate(collection, LabelEncoder({"cats": basis(0)}))


@pytest.mark.parametrize("ks", [(), (0,), (-1,), (5, 0, 1), (3, -2), (1, 1001)])
def test_invalid_ks_are_refused(tmp_path: Path, ks: tuple[int, ...]) -> None:
    counts = {"cats": 2, "dogs": 2}
    collection = build(tmp_path, clustered(counts))
    with pytest.raises(InvalidArgument, match="ks must be"):
        evaluate(collection, LabelEncoder(centres_for(counts)), ks=ks)


@pytest.mark.parametrize(
    ("template", "message"), [("a photo", r"must contain '\{label\}'"), ("{label} of {kind}", "not usable")]
)
def test_template_without_a_usable_label_placeholder_is_refused(tmp_path: Path, template: str, message: str) -> None:
    counts = {"cats": 2, "dogs": 2}
    collection = build(tmp_path, clustered(counts))
    encoder = LabelEncoder(centres_for(counts))
    with pytest.raises(InvalidArgument, match=message):
        evaluate(collection, encoder, template=template)
    assert encoder.texts_encoded == []


def test_custom_template_is_used_for_the_text_queries(tmp_path: Path) -> None:
    counts = {"cats": 2, "dogs": 2}
    collection = build(tmp_path, clustered(counts))
    encoder = LabelEncoder(centres_for(counts))

    report = evaluate(collection, encoder, ks=(1,), template="an image of {label} outdoors").report

    assert encoder.texts_encoded == ["an image of cats outdoors", "an image of dogs outdoors"]
    assert report.text_template == "an image of {label} outdoors"
    assert report.text_to_image.map == 1.0


# --- per-query results and summaries ------------------------------------------------------------------------------


def add_misfits(root: Path) -> None:
    """Images filed under a colour they do not look like, so rankings are imperfect and AP varies."""
    save_color(root / "red" / "orange.jpg", (240, 150, 20))
    save_color(root / "blue" / "purple.jpg", (170, 30, 160))
    save_color(root / "green" / "teal.jpg", (20, 150, 200))
    save_color(root / "yellow" / "grey.jpg", (128, 128, 128))


@pytest.fixture
def mixed(fake_service: ClipSearch, fake_encoder: FakeEncoder, color_folder: Path) -> Evaluation:
    add_misfits(color_folder)
    fake_service.index_folder(color_folder, collection="colors")
    return evaluate(fake_service.collection("colors"), fake_encoder, ks=(1, 3, 10))


def directions(evaluation: Evaluation) -> list[tuple[Direction, Any]]:
    return [
        (evaluation.text_to_image, evaluation.report.text_to_image),
        (evaluation.image_to_image, evaluation.report.image_to_image),
    ]


def test_per_query_results_are_sorted_worst_first(mixed: Evaluation) -> None:
    for direction, _ in directions(mixed):
        aps = [row.ap for row in direction.per_query]
        assert aps == sorted(aps)
        assert aps[0] < 1.0 == aps[-1]  # some queries are imperfect, so the order is not trivial
    assert len(mixed.text_to_image.per_query) == 5 and len(mixed.image_to_image.per_query) == 19


def test_summary_figures_are_the_means_of_the_per_query_figures(mixed: Evaluation) -> None:
    for direction, summary in directions(mixed):
        rows = direction.per_query
        assert summary.queries == len(rows)
        assert summary.map == pytest.approx(np.mean([r.ap for r in rows]), abs=1e-6)
        assert summary.mrr == pytest.approx(np.mean([r.rr for r in rows]), abs=1e-6)
        for k in (1, 3, 10):
            assert summary.recall_at[k] == pytest.approx(np.mean([r.recall_at[k] for r in rows]), abs=1e-6)
            assert summary.precision_at[k] == pytest.approx(np.mean([r.precision_at[k] for r in rows]), abs=1e-6)
            assert summary.hit_rate_at[k] == pytest.approx(np.mean([r.hit_rate_at[k] for r in rows]), abs=1e-6)
            assert summary.ndcg_at[k] == pytest.approx(np.mean([r.ndcg_at[k] for r in rows]), abs=1e-6)
        assert 0.0 < summary.map < 1.0


def test_worst_queries_hold_at_most_ten_lowest_ap_results(mixed: Evaluation) -> None:
    text, image = mixed.report.text_to_image, mixed.report.image_to_image
    assert text.worst == mixed.text_to_image.per_query  # 5 queries: all of them
    assert image.worst == mixed.image_to_image.per_query[:10]  # 19 queries: the 10 lowest
    assert len(image.worst) == 10


def test_top_scores_and_relevance_follow_each_querys_ranking(mixed: Evaluation) -> None:
    for direction, _ in directions(mixed):
        assert direction.top_scores.shape == direction.top_relevant.shape == (len(direction.per_query), 10)
        assert (np.diff(direction.top_scores, axis=1) <= 0).all()  # best first
    # top_relevant is in query order, per_query worst-first: compare as multisets of relevant ranks.
    expected = sorted(tuple(r for r in row.relevant_ranks if r <= 10) for row in mixed.image_to_image.per_query)
    got = sorted(tuple(np.flatnonzero(row) + 1) for row in mixed.image_to_image.top_relevant)
    assert got == expected


# --- JSON ground truth -------------------------------------------------------------------------------------------


@pytest.fixture
def colors(fake_service: ClipSearch, color_folder: Path) -> Collection:
    fake_service.index_folder(color_folder, collection="colors")
    return fake_service.collection("colors")


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def test_json_paths_resolve_against_the_files_folder_and_absolute_paths_work(
    colors: Collection, fake_encoder: FakeEncoder, color_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    working = tmp_path / "somewhere" / "else"
    working.mkdir(parents=True)
    monkeypatch.chdir(working)  # "../photos" from here would be <tmp>/somewhere/photos, which does not exist
    photos = color_folder.resolve()
    truth = write_json(
        tmp_path / "truth" / "gt.json",
        {
            "text_queries": [
                {
                    "query": "red things",
                    "relevant": ["../photos/red/red_0.jpg", "../photos/red/red_1.jpg", str(photos / "red/red_2.jpg")],
                }
            ],
            "image_queries": [
                {
                    "image": "../photos/blue/blue_0.jpg",
                    "relevant": ["../photos/blue/blue_1.jpg", str(photos / "blue" / "blue_2.jpg")],
                }
            ],
        },
    )

    evaluation = evaluate(colors, fake_encoder, ground_truth=str(truth), ks=(1, 3))

    report = evaluation.report
    assert report.ground_truth == str(truth.resolve())
    assert (report.labels, report.unknown_paths, report.unknown_count, report.notes) == (None, [], 0, [])
    assert fake_encoder.texts_encoded[-1] == "red things"
    [text] = evaluation.text_to_image.per_query
    assert (text.query, text.relevant, text.relevant_ranks, text.ap) == ("red things", 3, [1, 2, 3], 1.0)
    [image] = evaluation.image_to_image.per_query
    assert (image.query, image.relevant, image.relevant_ranks) == (str(photos / "blue" / "blue_0.jpg"), 2, [1, 2])
    assert (report.text_to_image.map, report.image_to_image.map) == (1.0, 1.0)


def test_unknown_relevant_paths_are_reported_and_a_query_left_with_none_is_skipped(
    colors: Collection, fake_encoder: FakeEncoder, tmp_path: Path
) -> None:
    truth = write_json(
        tmp_path / "gt.json",
        {
            "text_queries": [
                {"query": "red", "relevant": ["photos/red/red_0.jpg", "photos/red/gone.jpg", "/nowhere/x.jpg"]},
                {"query": "blue sky", "relevant": ["photos/sky/1.jpg"]},
            ],
            "image_queries": [
                {"image": "photos/green/green_0.jpg", "relevant": ["photos/green/green_1.jpg"]},
                {"image": "photos/white/white_0.jpg", "relevant": ["photos/snow/1.jpg", "photos/red/gone.jpg"]},
            ],
        },
    )

    report = evaluate(colors, fake_encoder, ground_truth=str(truth), ks=(1, 3)).report

    assert report.unknown_paths == ["photos/red/gone.jpg", "/nowhere/x.jpg", "photos/sky/1.jpg", "photos/snow/1.jpg"]
    assert report.unknown_count == 4
    assert (report.text_to_image.queries, report.text_to_image.skipped) == (1, 1)
    assert (report.image_to_image.queries, report.image_to_image.skipped) == (1, 1)
    assert report.notes == [
        "'blue sky': none of its relevant images is in the collection",
        "photos/white/white_0.jpg: no relevant image other than itself is in the collection",
    ]
    [red] = report.text_to_image.worst
    assert red.relevant == 1 and red.relevant_ranks[0] <= 3  # only the known image counts as relevant
    assert "blue sky" not in fake_encoder.texts_encoded  # a skipped query is not even encoded


def test_json_with_no_usable_query_is_refused(colors: Collection, fake_encoder: FakeEncoder, tmp_path: Path) -> None:
    truth = write_json(tmp_path / "gt.json", {"text_queries": [{"query": "red", "relevant": ["nowhere.jpg"]}]})
    with pytest.raises(GroundTruthError, match=r"No usable query.*'red': none of its relevant images"):
        evaluate(colors, fake_encoder, ground_truth=str(truth))


def test_image_query_outside_the_collection_is_embedded_and_ranked(
    colors: Collection, fake_encoder: FakeEncoder, tmp_path: Path
) -> None:
    probe = save_color(tmp_path / "outside" / "probe.jpg", (230, 20, 20))
    truth = write_json(
        tmp_path / "gt.json",
        {"image_queries": [{"image": "outside/probe.jpg", "relevant": [f"photos/red/red_{i}.jpg" for i in range(3)]}]},
    )
    before = fake_encoder.images_encoded

    evaluation = evaluate(colors, fake_encoder, ground_truth=str(truth), ks=(1, 3))

    assert fake_encoder.images_encoded == before + 1
    [row] = evaluation.image_to_image.per_query
    assert row.query == str(probe.resolve())
    assert (row.relevant, row.relevant_ranks, row.ap) == (3, [1, 2, 3], 1.0)
    assert [Path(p).parent.name for p in row.top] == ["red", "red", "red"]
    assert evaluation.report.text_to_image.queries == 0
    assert evaluation.report.image_to_image.recall_at == {1: round(1 / 3, 6), 3: 1.0}


def test_json_image_query_in_the_collection_never_returns_itself(
    colors: Collection, fake_encoder: FakeEncoder, color_folder: Path, tmp_path: Path
) -> None:
    red = [f"photos/red/red_{i}.jpg" for i in range(3)]
    truth = write_json(tmp_path / "gt.json", {"image_queries": [{"image": red[0], "relevant": red}]})
    before = fake_encoder.images_encoded

    evaluation = evaluate(colors, fake_encoder, ground_truth=str(truth), ks=(1, 2, 14))

    assert fake_encoder.images_encoded == before  # its stored vector is used
    [row] = evaluation.image_to_image.per_query
    own = str(color_folder.resolve() / "red" / "red_0.jpg")
    assert row.query == own
    assert (row.relevant, row.relevant_ranks, row.ap) == (2, [1, 2], 1.0)
    assert row.recall_at == {1: 0.5, 2: 1.0, 14: 1.0}
    assert len(row.top) == 14 and own not in row.top


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        ("", "is not valid JSON"),
        ({"text_queries": [{"query": "red", "relevant": [], "weight": 2}]}, r"expected shape.*text_queries\.0\.weight"),
        ({"queries": [{"query": "red", "relevant": []}]}, "expected shape.*queries: Extra inputs"),
        ({"image_queries": [{"image": "a.jpg"}]}, r"expected shape.*image_queries\.0\.relevant: Field required"),
        ({"text_queries": [{"query": "red", "relevant": "photos/red/red_0.jpg"}]}, "expected shape"),
        ([{"query": "red", "relevant": []}], "expected shape"),
        ({}, "holds no queries"),
        ({"text_queries": [], "image_queries": []}, "holds no queries"),
    ],
)
def test_malformed_ground_truth_files_are_refused_with_a_clear_message(
    colors: Collection, fake_encoder: FakeEncoder, tmp_path: Path, content: Any, message: str
) -> None:
    truth = write_json(tmp_path / "gt.json", content)
    with pytest.raises(GroundTruthError, match=message) as raised:
        evaluate(colors, fake_encoder, ground_truth=str(truth))
    assert str(truth) in str(raised.value)  # the message names the file


def test_missing_ground_truth_file_is_refused(colors: Collection, fake_encoder: FakeEncoder, tmp_path: Path) -> None:
    with pytest.raises(GroundTruthError, match=r"'.*nope\.json' does not exist"):
        evaluate(colors, fake_encoder, ground_truth=str(tmp_path / "nope.json"))


def test_ground_truth_file_outside_the_allowed_folders_is_not_read(
    colors: Collection, fake_encoder: FakeEncoder, color_folder: Path, tmp_path: Path
) -> None:
    query = {"text_queries": [{"query": "red", "relevant": ["red/red_0.jpg"]}]}
    outside = write_json(tmp_path / "gt.json", query)
    inside = write_json(color_folder / "gt.json", query)
    guard = PathGuard([color_folder])

    with pytest.raises(PathNotAllowed, match="outside the folders"):
        evaluate(colors, fake_encoder, ground_truth=str(outside), guard=guard)
    # The same file inside the allowed folder is fine.
    report = evaluate(colors, fake_encoder, ground_truth=str(inside), guard=guard).report
    assert (report.text_to_image.queries, report.unknown_count) == (1, 0)


def test_image_query_outside_the_allowed_folders_is_skipped_not_read(
    colors: Collection, fake_encoder: FakeEncoder, color_folder: Path, tmp_path: Path
) -> None:
    probe = save_color(tmp_path / "outside" / "probe.jpg", (230, 20, 20))
    truth = write_json(
        color_folder / "gt.json",
        {
            "text_queries": [{"query": "red", "relevant": ["red/red_0.jpg"]}],
            "image_queries": [{"image": str(probe), "relevant": ["red/red_0.jpg"]}],
        },
    )
    before = fake_encoder.images_encoded

    report = evaluate(colors, fake_encoder, ground_truth=str(truth), guard=PathGuard([color_folder])).report

    assert fake_encoder.images_encoded == before
    assert (report.image_to_image.queries, report.image_to_image.skipped) == (0, 1)
    assert len(report.notes) == 1 and "outside the folders" in report.notes[0]
    assert report.text_to_image.queries == 1


def test_image_queries_that_cannot_be_used_are_skipped_with_a_reason(
    colors: Collection, fake_encoder: FakeEncoder, tmp_path: Path
) -> None:
    truth = write_json(
        tmp_path / "gt.json",
        {
            "text_queries": [{"query": "red", "relevant": ["photos/red/red_0.jpg"]}],
            "image_queries": [
                {"image": "photos/green/green_0.jpg", "relevant": ["photos/green/green_0.jpg"]},  # only itself
                {"image": "outside/missing.jpg", "relevant": ["photos/red/red_1.jpg"]},  # no such file
            ],
        },
    )

    report = evaluate(colors, fake_encoder, ground_truth=str(truth), ks=(1,)).report

    assert (report.image_to_image.queries, report.image_to_image.skipped) == (0, 2)
    assert report.notes[0] == "photos/green/green_0.jpg: no relevant image other than itself is in the collection"
    assert report.notes[1].startswith(f"{(tmp_path / 'outside' / 'missing.jpg').resolve()}: cannot read file")
    assert report.unknown_count == 0
