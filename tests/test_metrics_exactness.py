"""Our ranking metrics against trec_eval (through pytrec_eval) on the same rankings, and the written report files."""

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import pytrec_eval
from PIL import Image

from conftest import FakeEncoder, save_color
from server.evaluation.evaluate import evaluate
from server.evaluation.metrics import RankingMetrics, rank_order, ranked_relevance, ranking_metrics
from server.evaluation.report import write_report
from server.service import ClipSearch

KS = (1, 3, 5, 10, 50)
MEASURES = {
    "map",
    "recip_rank",
    "recall.1,3,5,10,50",
    "P.1,3,5,10,50",
    "ndcg_cut.1,3,5,10,50",
    "success.1,3,5,10,50",
}
TOLERANCE = 1e-6


def per_query_values(metrics: RankingMetrics, q: int) -> dict[str, float]:
    """One query's figures under trec_eval's measure names."""
    values = {"map": float(metrics.ap[q]), "recip_rank": float(metrics.rr[q])}
    for k in KS:
        values[f"recall_{k}"] = float(metrics.recall[k][q])
        values[f"P_{k}"] = float(metrics.precision[k][q])
        values[f"ndcg_cut_{k}"] = float(metrics.ndcg[k][q])
        values[f"success_{k}"] = float(metrics.hit_rate[k][q])
    return values


def trec_eval(
    order: npt.NDArray[np.int64], relevant: npt.NDArray[np.bool_], unranked: npt.NDArray[np.int64]
) -> dict[str, dict[str, float]]:
    """trec_eval's figures for our ranking order; `unranked[q]` relevant documents appear in the qrels only.

    Scores fall strictly with rank, so trec_eval's own tie-breaking (by docno) never comes into play.
    """
    queries, n = relevant.shape
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, dict[str, float]] = {}
    for q in range(queries):
        qrels[f"q{q}"] = {f"d{j}": int(relevant[q, j]) for j in range(n)}
        qrels[f"q{q}"].update({f"unranked{m}": 1 for m in range(int(unranked[q]))})
        run[f"q{q}"] = {f"d{int(item)}": float(n - position) for position, item in enumerate(order[q])}
    return pytrec_eval.RelevanceEvaluator(qrels, MEASURES).evaluate(run)


def random_case(
    rng: np.random.Generator, n: int, ties: bool
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
    """Scores, relevance and unranked relevant counts for a batch of queries covering the awkward shapes."""
    queries = 60
    scores = rng.integers(0, 4, size=(queries, n)).astype(np.float64) if ties else rng.standard_normal((queries, n))
    relevant = rng.random((queries, n)) < rng.uniform(0.02, 0.7, size=(queries, 1))
    unranked = np.zeros(queries, np.int64)
    relevant[0:8] = False  # exactly one relevant item
    relevant[np.arange(8), rng.integers(0, n, 8)] = True
    relevant[8:12] = True  # every item relevant
    relevant[12:18] = False  # nothing relevant is ranked, but relevant items exist elsewhere
    unranked[12:18] = rng.integers(1, 5, 6)
    unranked[18:30] = rng.integers(0, 4, 12)  # some relevant items ranked, some not
    relevant[30:33] = False  # nothing relevant anywhere: trec_eval skips these
    return scores, relevant, unranked


def test_random_rankings_match_trec_eval_on_every_metric() -> None:
    rng = np.random.default_rng(20240607)
    compared = skipped = 0
    worst = 0.0
    distinct_ap: set[float] = set()
    for n in (1, 2, 7, 40, 300):
        for ties in (True, False):
            scores, relevant, unranked = random_case(rng, n, ties)
            if ties and n >= 7:
                assert any(len(np.unique(row)) < n for row in scores)  # the tie-breaking really is exercised
            order = rank_order(scores)
            ranked = ranked_relevance(scores, relevant)
            n_relevant = relevant.sum(axis=1) + unranked
            ours = ranking_metrics(ranked, KS, n_relevant=n_relevant)
            theirs = trec_eval(order, relevant, unranked)
            for q in range(len(scores)):
                mine = per_query_values(ours, q)
                if n_relevant[q] == 0:  # trec_eval leaves such queries out of its means; ours scores them 0
                    assert all(value == 0.0 for value in mine.values())
                    assert all(value == 0.0 for value in theirs.get(f"q{q}", {}).values())
                    skipped += 1
                    continue
                reference = theirs[f"q{q}"]
                assert set(mine) <= set(reference)
                for name, value in mine.items():
                    difference = abs(value - reference[name])
                    worst = max(worst, difference)
                    assert difference <= TOLERANCE, f"n={n} ties={ties} query {q}: {name} {value} != {reference[name]}"
                distinct_ap.add(round(mine["map"], 9))
                compared += 1
    assert compared > 5 * 2 * 45 and skipped >= 5 * 2 * 3
    assert len(distinct_ap) > 100  # the cases really differ, so agreement means something
    assert worst <= TOLERANCE


def test_ranking_without_any_relevant_item_scores_zero_like_trec_eval() -> None:
    scores = np.array([[0.3, 0.9, 0.1]])
    ranked = ranked_relevance(scores, np.zeros((1, 3), np.bool_))
    ours = per_query_values(ranking_metrics(ranked, KS, n_relevant=np.array([2])), 0)
    theirs = trec_eval(rank_order(scores), np.zeros((1, 3), np.bool_), np.array([2]))["q0"]
    assert all(ours[name] == theirs[name] == 0.0 for name in ours)


def test_tied_scores_would_disagree_with_trec_eval_unless_our_order_is_given() -> None:
    # The comparison above feeds trec_eval our order; this shows why: trec_eval breaks ties by docno, we by item index.
    scores = np.zeros((1, 12))
    relevant = np.zeros((1, 12), np.bool_)
    relevant[0, 2] = True  # item 2: rank 3 for us; trec_eval ranks d9, d8, ..., d2 (docno descending) -> rank 8
    ours = ranking_metrics(ranked_relevance(scores, relevant), KS)
    assert ours.rr[0] == pytest.approx(1 / 3)
    qrels = {"q": {f"d{j}": int(relevant[0, j]) for j in range(12)}}
    tied_run = {"q": {f"d{j}": 0.0 for j in range(12)}}
    assert pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(tied_run)["q"]["recip_rank"] != ours.rr[0]
    assert trec_eval(rank_order(scores), relevant, np.zeros(1, np.int64))["q0"]["recip_rank"] == pytest.approx(1 / 3)


# --- the written report --------------------------------------------------------------------------------------------


def mixed_color_folder(root: Path) -> Path:
    """Colour folders with a few misfits, so rankings are imperfect and AP varies between queries."""
    colours = {"red": (230, 20, 20), "green": (20, 200, 30), "blue": (25, 30, 220), "yellow": (230, 220, 30)}
    for name, rgb in colours.items():
        for i in range(3):
            save_color(root / name / f"{name}_{i}.jpg", rgb)
    save_color(root / "red" / "orange.jpg", (240, 150, 20))  # nearer yellow than red
    save_color(root / "blue" / "purple.jpg", (170, 30, 160))  # nearer red than blue
    save_color(root / "green" / "teal.jpg", (20, 150, 200))  # nearer blue than green
    save_color(root / "yellow" / "lime.jpg", (120, 220, 20))  # between green and yellow
    return root


def test_json_report_figures_match_trec_eval_on_the_reports_own_rankings(
    fake_service: ClipSearch, tmp_path: Path
) -> None:
    folder = mixed_color_folder(tmp_path / "photos")
    fake_service.index_folder(folder, collection="colors")

    returned = fake_service.evaluate("colors", ks=KS, report_dir=tmp_path / "r", plots=False)

    written = json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))
    n = written["images"]
    assert n == 16 and returned.images == n
    assert not (tmp_path / "r" / "similarity_histogram.png").exists()
    for direction in ("text_to_image", "image_to_image"):
        summary = written[direction]
        rows = written["per_query"][direction]
        assert summary["queries"] == len(rows) > 0
        assert summary["map"] < 1.0  # imperfect rankings, so the figures are not trivially 1
        qrels, run = {}, {}
        for q, row in enumerate(rows):
            ranks = row["relevant_ranks"]
            assert len(ranks) == row["relevant"]  # every relevant image is somewhere in the full ranking
            qrels[f"q{q}"] = {f"rank{r}": 1 for r in ranks}
            # The relevant images at their ranks, non-relevant filler everywhere else.
            run[f"q{q}"] = {f"rank{r}": float(n - r) for r in range(1, n + 1)}
            # The top list agrees with the relevant ranks: a top result is relevant exactly when in the query's folder.
            label = Path(row["query"]).parent.name if direction == "image_to_image" else row["query"].split()[-1]
            in_folder = [i + 1 for i, path in enumerate(row["top"]) if Path(path).parent.name == label]
            assert in_folder == [r for r in ranks if r <= len(row["top"])]
        reference = pytrec_eval.RelevanceEvaluator(qrels, MEASURES).evaluate(run)

        def mean(measure: str, reference: dict[str, dict[str, float]] = reference) -> float:
            return float(np.mean([values[measure] for values in reference.values()]))

        assert summary["map"] == pytest.approx(mean("map"), abs=TOLERANCE)
        assert summary["mrr"] == pytest.approx(mean("recip_rank"), abs=TOLERANCE)
        for k in KS:
            assert summary["recall_at"][str(k)] == pytest.approx(mean(f"recall_{k}"), abs=TOLERANCE)
            assert summary["precision_at"][str(k)] == pytest.approx(mean(f"P_{k}"), abs=TOLERANCE)
            assert summary["ndcg_at"][str(k)] == pytest.approx(mean(f"ndcg_cut_{k}"), abs=TOLERANCE)
            assert summary["hit_rate_at"][str(k)] == pytest.approx(mean(f"success_{k}"), abs=TOLERANCE)
        for q, row in enumerate(rows):
            assert row["ap"] == pytest.approx(reference[f"q{q}"]["map"], abs=TOLERANCE)
        # The returned report carries the same figures as the written one.
        assert getattr(returned, direction).map == summary["map"]


def test_report_with_plots_writes_both_pngs_markdown_table_and_full_json(
    fake_service: ClipSearch, fake_encoder: FakeEncoder, tmp_path: Path
) -> None:
    folder = mixed_color_folder(tmp_path / "photos")
    fake_service.index_folder(folder, collection="colors")
    evaluation = evaluate(fake_service.collection("colors"), fake_encoder, ks=(1, 5))
    target = tmp_path / "out" / "report"

    pngs = write_report(evaluation, target, plots=True)

    assert pngs == [target / "similarity_histogram.png", target / "tsne.png"]
    for png in pngs:
        with Image.open(png) as image:
            assert image.format == "PNG"
            assert image.width >= 400 and image.height >= 300
            assert len(np.unique(np.asarray(image.convert("L")))) > 10  # something was drawn
    assert evaluation.report.report_dir == str(target)
    assert evaluation.report.plots == [str(p) for p in pngs]

    markdown = (target / "report.md").read_text(encoding="utf-8")
    assert "| Metric | Text-to-Image | Image-to-Image |" in markdown
    t2i, i2i = evaluation.report.text_to_image, evaluation.report.image_to_image
    assert f"| mAP | {t2i.map:.4f} | {i2i.map:.4f} |" in markdown
    assert f"| Recall@5 | {t2i.recall_at[5]:.4f} | {i2i.recall_at[5]:.4f} |" in markdown
    assert "![similarity_histogram](similarity_histogram.png)" in markdown
    assert "![tsne](tsne.png)" in markdown

    written = json.loads((target / "report.json").read_text(encoding="utf-8"))
    assert written["plots"] == [str(p) for p in pngs]
    for direction, count in (("text_to_image", 4), ("image_to_image", 16)):
        rows = written["per_query"][direction]
        assert len(rows) == written[direction]["queries"] == count
        aps = [row["ap"] for row in rows]
        assert aps == sorted(aps) and aps[0] < aps[-1]  # worst first, and not all equal
        assert {"relevant_ranks", "top", "recall_at", "ndcg_at"} <= set(rows[0])
