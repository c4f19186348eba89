"""Written evaluation reports: report.json (everything), report.md (the paper's Table 3, then per-query details),
and the paper's two pictures: a histogram of retrieved similarity scores (its Fig. 4) and a t-SNE map (its Fig. 9).
"""

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from server.evaluation.evaluate import Direction, Evaluation
from server.results import ComparedCollection, EvaluationReport

log = logging.getLogger(__name__)

TSNE_MAX_POINTS = 3000
MARKDOWN_MAX_ROWS = 200


def write_report(evaluation: Evaluation, folder: Path, plots: bool = True) -> list[Path]:
    """Write the report files into `folder` (created if needed); returns the PNGs written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    if plots:
        written.append(_histogram(evaluation, folder / "similarity_histogram.png"))
        tsne = _tsne(evaluation, folder / "tsne.png")
        if tsne is not None:
            written.append(tsne)
    report = evaluation.report.model_copy(update={"report_dir": str(folder), "plots": [str(p) for p in written]})
    evaluation.report = report
    full = {
        **report.model_dump(mode="json"),
        "per_query": {
            "text_to_image": [q.model_dump(mode="json") for q in evaluation.text_to_image.per_query],
            "image_to_image": [q.model_dump(mode="json") for q in evaluation.image_to_image.per_query],
        },
    }
    (folder / "report.json").write_text(json.dumps(full, indent=1), encoding="utf-8")
    (folder / "report.md").write_text(markdown(evaluation), encoding="utf-8")
    return written


def write_comparison(
    evaluations: Sequence[Evaluation], compared: Sequence[ComparedCollection], folder: Path, plots: bool = True
) -> list[Path]:
    """Several models' evaluations side by side: report.json and report.md in `folder`, each collection's own report
    (and plots) in a subfolder named after it. Returns every PNG written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for evaluation in evaluations:
        written += write_report(evaluation, folder / evaluation.report.collection, plots)
    first = evaluations[0].report
    full = {**first.model_dump(mode="json"), "comparison": [c.model_dump(mode="json") for c in compared]}
    (folder / "report.json").write_text(json.dumps(full, indent=1), encoding="utf-8")
    (folder / "report.md").write_text(comparison_markdown(evaluations, compared), encoding="utf-8")
    return written


def comparison_markdown(evaluations: Sequence[Evaluation], compared: Sequence[ComparedCollection]) -> str:
    first = evaluations[0].report
    names = [c.collection for c in compared]
    lines = [
        "# Retrieval evaluation: models compared on the same images",
        "",
        f"Ground truth: {first.ground_truth}; {first.images} images"
        + (f", {first.labels} labels" if first.labels is not None else "")
        + f"; text queries from {first.text_template!r}. Speeds measured on this machine when the report was made.",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        "| Model | " + " | ".join(c.model for c in compared) + " |",
        "| Precision | " + " | ".join(c.precision for c in compared) + " |",
        "| Dimension | " + " | ".join(str(c.dim) for c in compared) + " |",
        "| Images/s (embedding) | " + " | ".join(f"{c.images_per_second:.1f}" for c in compared) + " |",
        "| Text query (ms, median) | " + " | ".join(f"{c.text_query_ms:.1f}" for c in compared) + " |",
    ]
    per_model = [metric_rows(e.report) for e in evaluations]
    for column, direction in ((1, "Text-to-Image"), (2, "Image-to-Image")):
        for row, (name, *_) in enumerate(per_model[0]):
            values = " | ".join(f"{rows[row][column]:.4f}" for rows in per_model)
            lines.append(f"| {direction} {name} | {values} |")
    lines += [
        "",
        "Each collection's own report, per query and with plots: " + ", ".join(f"[{n}]({n}/report.md)" for n in names),
        "",
    ]
    return "\n".join(lines)


def metric_rows(report: EvaluationReport) -> list[tuple[str, float, float]]:
    """(metric, text-to-image, image-to-image) in the order of the paper's Table 3, then the other metrics."""
    t2i, i2i = report.text_to_image, report.image_to_image
    rows = [("mAP", t2i.map, i2i.map), ("MRR", t2i.mrr, i2i.mrr)]
    for name, attribute in (
        ("Recall", "recall_at"),
        ("Hit rate", "hit_rate_at"),
        ("Precision", "precision_at"),
        ("nDCG", "ndcg_at"),
    ):
        rows += [(f"{name}@{k}", getattr(t2i, attribute)[k], getattr(i2i, attribute)[k]) for k in report.ks]
    return rows


def markdown(evaluation: Evaluation) -> str:
    report = evaluation.report
    t2i, i2i = report.text_to_image, report.image_to_image
    lines = [
        f"# Retrieval evaluation: collection '{report.collection}'",
        "",
        f"Ground truth: {report.ground_truth}; {report.images} images"
        + (f", {report.labels} labels" if report.labels is not None else "")
        + f"; text queries from {report.text_template!r}.",
        "",
        "| Metric | Text-to-Image | Image-to-Image |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {t:.4f} | {i:.4f} |" for name, t, i in metric_rows(report)]
    lines += [f"| Queries (skipped) | {t2i.queries} ({t2i.skipped}) | {i2i.queries} ({i2i.skipped}) |", ""]
    if report.unknown_count:
        lines += [f"{report.unknown_count} ground-truth paths are not in the collection.", ""]
    directions = (("Text-to-image", evaluation.text_to_image), ("Image-to-image", evaluation.image_to_image))
    for title, direction in directions:
        lines += _query_table(title, direction, report.ks)
    if report.plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in report.plots] + [""]
    return "\n".join(lines)


def _query_table(title: str, direction: Direction, ks: list[int]) -> list[str]:
    k = ks[-1]
    rows = direction.per_query[:MARKDOWN_MAX_ROWS]
    lines = [
        f"## {title} queries, worst first",
        "",
        f"| Query | Relevant | AP | RR | Recall@{k} | First relevant rank | Top result |",
        "|---|---|---|---|---|---|---|",
    ]
    for q in rows:
        first = q.relevant_ranks[0] if q.relevant_ranks else "-"
        top = Path(q.top[0]).name if q.top else "-"
        query = q.query.replace("|", "\\|")
        lines.append(f"| {query} | {q.relevant} | {q.ap:.3f} | {q.rr:.3f} | {q.recall_at[k]:.3f} | {first} | {top} |")
    if len(direction.per_query) > len(rows):
        lines.append(f"| ... {len(direction.per_query) - len(rows)} more in report.json | | | | | | |")
    return [*lines, ""]


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _histogram(evaluation: Evaluation, target: Path) -> Path:
    """Fig. 4: similarity scores of the retrieved (top-k) results, relevant and not, per direction."""
    plt = _pyplot()
    k = evaluation.report.ks[-1]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
    for axis, (title, direction) in zip(
        axes, (("Text → image", evaluation.text_to_image), ("Image → image", evaluation.image_to_image)), strict=True
    ):
        scores, relevant = direction.top_scores[:, :k], direction.top_relevant[:, :k]
        finite = np.isfinite(scores)
        if scores.size and finite.any():
            low, high = float(scores[finite].min()), float(scores[finite].max())
            bins = np.linspace(low, high if high > low else low + 1e-3, 31)
            axis.hist(
                [scores[finite & relevant], scores[finite & ~relevant]],
                bins=bins,
                stacked=True,
                label=["relevant", "not relevant"],
                color=["tab:green", "tab:gray"],
            )
            axis.legend()
        axis.set_title(f"{title}: top-{k} similarity scores ({direction.summary.queries} queries)")
        axis.set_xlabel("cosine similarity")
        axis.set_ylabel("results")
    figure.tight_layout()
    figure.savefig(target, dpi=110)
    plt.close(figure)
    return target


def _tsne(evaluation: Evaluation, target: Path) -> Path | None:
    """Fig. 9: a 2-D t-SNE map of the image embeddings, coloured by label (a seeded sample if very large)."""
    vectors = evaluation.vectors
    n = len(vectors)
    if n < 5:
        log.info("t-SNE skipped: %d images are too few", n)
        return None
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(n, TSNE_MAX_POINTS, replace=False)) if n > TSNE_MAX_POINTS else np.arange(n)
    perplexity = float(min(30.0, max(2.0, (len(rows) - 1) / 3.0)))
    points = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=0).fit_transform(vectors[rows])
    labels = [evaluation.truth.labels[i] if evaluation.truth.labels else None for i in rows]
    names = [label or "(no label)" for label in labels]
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    shown = sorted(counts, key=lambda name: (-counts[name], name))[:19]
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(8, 7))
    colours = plt.get_cmap("tab10" if len(shown) <= 10 else "tab20")
    for index, name in enumerate(shown):
        mask = np.array([x == name for x in names])
        axis.scatter(points[mask, 0], points[mask, 1], s=12, color=colours(index), label=name)
    rest = np.array([x not in shown for x in names])
    if rest.any():
        axis.scatter(points[rest, 0], points[rest, 1], s=8, color="lightgray", label="other labels")
    axis.legend(fontsize=7, markerscale=1.5, loc="best")
    sampled = f", {len(rows)} of {n} sampled" if len(rows) < n else ""
    axis.set_title(f"t-SNE of image embeddings ({n} images{sampled}, perplexity {perplexity:.0f})")
    axis.set_xticks([])
    axis.set_yticks([])
    figure.tight_layout()
    figure.savefig(target, dpi=110)
    plt.close(figure)
    return target
