"""The evaluation tool: `evaluate_retrieval` measures one collection, or compares the models of several."""

from pathlib import Path
from typing import Annotated

from mcp.server import MCPServer
from mcp.server.mcpserver import Context, Image
from mcp.types import CallToolResult, ToolAnnotations
from pydantic import Field

from server.limits import (
    DEFAULT_COLLECTION,
    DEFAULT_KS,
    DEFAULT_TEMPLATE,
    MAX_COMPARED,
    MAX_KS,
    MAX_TEMPLATE_CHARS,
    MIN_COMPARED,
    TOP_K,
)
from server.mcp_server.gallery import GALLERY_META, gallery_note
from server.mcp_server.support import READ_ONLY, CollectionName, ToolContext, tool_result
from server.results import EvaluationReport


def register(server: MCPServer, tools: ToolContext) -> None:
    """Add evaluate_retrieval to `server`."""
    ClientRoots = tools.client_roots()

    @server.tool(meta=GALLERY_META, annotations=ToolAnnotations(title="Measure retrieval quality", **READ_ONLY))
    async def evaluate_retrieval(
        ctx: Context,
        client_roots: ClientRoots,
        collection: CollectionName = DEFAULT_COLLECTION,
        ground_truth: Annotated[
            str,
            Field(
                description="'folders' (an image's label is its parent folder, relative to the indexed folder) or "
                'the absolute path of a JSON file {"text_queries": [{"query", "relevant": [paths]}], '
                '"image_queries": [{"image", "relevant": [paths]}]}'
            ),
        ] = "folders",
        ks: Annotated[
            list[Annotated[int, Field(**TOP_K.schema())]],
            Field(min_length=1, max_length=MAX_KS, description="Cut-offs k for Recall@k, Precision@k, nDCG@k"),
        ] = list(DEFAULT_KS),  # noqa: B006 - pydantic copies defaults
        text_template: Annotated[
            str,
            Field(
                min_length=1, max_length=MAX_TEMPLATE_CHARS, description="Text query per label; must contain {label}"
            ),
        ] = DEFAULT_TEMPLATE,
        plots: Annotated[
            bool, Field(description="Also write report.json, report.md, a score histogram and a t-SNE map")
        ] = False,
        collections: Annotated[
            list[CollectionName] | None,
            Field(
                min_length=MIN_COMPARED,
                max_length=MAX_COMPARED,
                description=f"Compare models: {MIN_COMPARED}-{MAX_COMPARED} collections of the same images, each built "
                "with another model, "
                "evaluated with the same ground truth and shown side by side with each model's measured speed "
                "(replaces `collection`)",
            ),
        ] = None,
    ) -> Annotated[CallToolResult, EvaluationReport]:
        """Measure how well search works on a collection, as in the CLIP+FAISS paper: mAP, MRR, Recall@k, hit
        rate@k, Precision@k and nDCG@k for text-to-image and image-to-image queries, worst queries listed. With
        `collections`, compares the models of several collections of the same images side by side."""
        guard = tools.access.guard(client_roots)

        def evaluate() -> EvaluationReport:
            service = tools.get()
            names = collections or [collection]
            report_dir = service.evaluation_dir(names[0]) if plots else None
            if collections:
                return service.compare(collections, ground_truth, ks, text_template, guard, report_dir, plots)
            return service.evaluate(collection, ground_truth, ks, text_template, guard, report_dir, plots)

        report = await tools.run(evaluate, ctx)
        lines = _comparison_lines(report) if report.comparison else _evaluation_lines(report)
        if report.report_dir:
            lines.append(f"Report written to {report.report_dir}")
        lines += gallery_note(ctx)
        images = [Image(data=Path(p).read_bytes(), format="png").to_image_content() for p in report.plots]
        return tool_result(report, "\n".join(lines), images)


def _evaluation_lines(report: EvaluationReport) -> list[str]:
    lines = [f"Evaluation of '{report.collection}' ({report.images} images, ground truth {report.ground_truth}):"]
    for direction, metrics in (("text→image", report.text_to_image), ("image→image", report.image_to_image)):
        recalls = ", ".join(f"R@{k} {v:.3f}" for k, v in metrics.recall_at.items())
        lines.append(
            f"{direction}: mAP {metrics.map:.3f}, MRR {metrics.mrr:.3f}, {recalls} "
            f"({metrics.queries} queries, {metrics.skipped} skipped)"
        )
    return lines


def _comparison_lines(report: EvaluationReport) -> list[str]:
    lines = [f"Models compared on the same {report.images} images (ground truth {report.ground_truth}):"]
    for c in report.comparison or []:
        lines.append(
            f"'{c.collection}' ({c.model}): text→image mAP {c.text_to_image.map:.3f}, image→image mAP "
            f"{c.image_to_image.map:.3f}, {c.images_per_second:.1f} images/s, text query {c.text_query_ms:.0f} ms"
        )
    return lines
