"""Plain-text views of the command line's results, for people (`--json` prints the structured result instead)."""

from pydantic import BaseModel

from server.results import (
    ClusterIndexReport,
    CollectionList,
    DuplicateReport,
    EvaluationReport,
    IndexReport,
    JobList,
    ModelList,
    SearchResponse,
)


def _text_stage_lines(result: IndexReport) -> list[str]:
    """What the text stage did, when it had work or something to say."""
    lines = []
    if result.text_to_read:
        lines.append(
            f"  text: {result.text_read + result.text_first_pass_only} of {result.text_to_read} images read in "
            f"{result.text_seconds:.1f} s ({result.text_images_per_second:.1f} images/s); {result.text_found} hold "
            f"text, {result.text_first_pass_only} passed over by the first pass"
        )
    if result.text_note:
        lines.append(f"  {result.text_note}")
    lines += [f"  text of {f.path}: {f.reason}" for f in result.text_problems]
    return lines


def _printable(text: str) -> str:
    """Text read in a photo, safe to print: control characters and direction marks shown as escapes."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def render(result: BaseModel) -> str:
    """A readable plain-text view of any result model."""
    if isinstance(result, SearchResponse):
        if not result.results:
            return f"No images in '{result.collection}' match {result.query!r}."
        width = max(len(str(len(result.results))), 4)
        rows = [f"{'rank':>{width}}  {'score':>6}  {'taken':<25}  path"]
        for hit in result.results:
            rows.append(f"{hit.rank:>{width}}  {hit.score:6.3f}  {(hit.taken or '-'):<25}  {hit.path}")
            if hit.text:
                rows.append(f"{'':>{width}}  text: {_printable(hit.text)}")
        return "\n".join(rows)
    if isinstance(result, ClusterIndexReport):
        return _cluster_lines(result)
    if isinstance(result, IndexReport):
        lines = [
            f"Collection '{result.collection}': {result.indexed_total} images",
            f"  added {result.added}, updated {result.updated}, moved {result.moved}, unchanged {result.unchanged}, "
            f"removed {result.removed}, failed {result.failed}",
            f"  embedded {result.embedded} in {result.seconds:.1f} s ({result.images_per_second:.1f} images/s)",
        ]
        if result.skipped_raw_with_sibling:
            twins = result.skipped_raw_with_sibling
            lines.append(f"  {twins} RAW files left out: a JPEG/HEIC of the same name was indexed instead")
        lines += [f"  skipped {f.path}: {f.reason}" for f in result.failures]
        lines += _text_stage_lines(result)
        return "\n".join(lines)
    if isinstance(result, EvaluationReport):
        return render_evaluation(result)
    if isinstance(result, DuplicateReport):
        lines = [
            f"{result.groups_total} groups of duplicates ({result.images_in_groups} images) among {result.images} "
            f"in '{result.collection}' (nothing was changed)"
        ]
        for number, group in enumerate(result.groups, start=result.offset + 1):
            lines.append(f"{number}. {group.kind}: keep {group.keeper}  ({group.keeper_reason})")
            lines += [
                f"     {m.path}  {m.width}×{m.height}  {m.taken or '-'}"
                for m in group.members
                if m.path != group.keeper
            ]
        return "\n".join(lines + result.notes)
    if isinstance(result, ModelList):
        lines = [f"{'model':<46}{'family':<12}{'languages':<15}{'size':>9}  {'dim':>4}  quality (published)"]
        for m in result.models:
            size = f"{'~' if m.download_estimated else ''}{m.download_mb:,} MB"
            quality = "; ".join(f"{f.metric} {f.value:g}" for f in m.figures[:2]) or "none published"
            mark = " *" if m.model == result.default else ("  (downloaded)" if m.downloaded else "")
            lines.append(f"{m.model:<46}{m.family:<12}{m.languages[:14]:<15}{size:>9}  {m.dim:>4}  {quality}{mark}")
            lines.append(f"{'':<4}{m.advice}")
        lines.append("* the default. Sources of the figures: clipsearch models --json; XM3600 is immich's benchmark.")
        return "\n".join(lines)
    if isinstance(result, JobList):
        if not result.jobs:
            return "No indexing jobs."
        rows = [f"{'job':<24}{'state':<12}{'done':>9}{'of':>9}  collection / folder"]
        rows += [
            f"{j.job_id:<24}{j.state:<12}{j.progress.done:>9}{j.progress.to_process:>9}  {j.collection} / {j.folder}"
            for j in result.jobs
        ]
        return "\n".join(rows)
    if isinstance(result, CollectionList):
        if not result.collections:
            return f"No collections in {result.index_dir}."
        rows = [f"{'name':<20}{'images':>8}  {'dim':>4}  {'index':<6} {'vectors':<8}{'family':<10}model"]
        rows += [
            f"{c.name:<20}{c.images:>8}  {c.dim:>4}  {c.index_type:<6} {c.precision:<8}{c.family or '?':<10}{c.model}"
            for c in result.collections
        ]
        return "\n".join(rows)
    return result.model_dump_json(indent=2)


def _cluster_lines(result: ClusterIndexReport) -> str:
    nodes = f"{result.nodes} node{'' if result.nodes == 1 else 's'}"
    where = {"local": f"on a local Ray instance ({nodes})", "not needed": "(nothing to embed: Ray not started)"}
    ran = where.get(result.cluster, f"on Ray at {result.cluster} ({nodes})")
    lines = [
        f"Archive '{result.collection}' from {result.source} {ran}",
        f"  listed {result.listed}, unchanged {result.unchanged}, embedded {result.embedded}, failed {result.failed}",
        f"  shards written {result.shards_written}, reused {result.shards_reused}",
        f"  {result.seconds:.1f} s ({result.images_per_second:.1f} images/s while embedding)",
    ]
    if result.index_type:
        how = f"built in {result.index_seconds:.1f} s" if result.index_built else "up to date"
        lines.append(
            f"  index {result.index_type}: {result.index_vectors} vectors, nprobe {result.index_nprobe}, "
            f"recall@10 {result.index_recall_at_10:.3f} ({how}); search it with -c {result.collection}"
        )
    lines += [f"  skipped {f.path}: {f.reason}" for f in result.failures]
    return "\n".join(lines)


def render_evaluation(report: EvaluationReport) -> str:
    """The paper's Table 3 layout: one row per metric, one column per direction."""
    from server.evaluation.report import metric_rows

    if report.comparison:
        return _render_comparison(report)
    t2i, i2i = report.text_to_image, report.image_to_image
    rows = [
        f"Collection '{report.collection}': {report.images} images, ground truth {report.ground_truth}",
        f"{'metric':<14}{'text→image':>12}{'image→image':>13}",
    ]
    rows += [f"{name:<14}{t:>12.3f}{i:>13.3f}" for name, t, i in metric_rows(report)]
    rows.append(f"{'queries':<14}{t2i.queries:>12}{i2i.queries:>13}")
    rows.append(f"{'skipped':<14}{t2i.skipped:>12}{i2i.skipped:>13}")
    if report.unknown_count:
        rows.append(f"{report.unknown_count} ground-truth paths are not in the collection")
    if report.report_dir:
        rows.append(f"report written to {report.report_dir}")
    return "\n".join(rows)


def _render_comparison(report: EvaluationReport) -> str:
    """Models side by side: one column per collection, one row per metric and direction, then the speeds."""
    from server.evaluation.report import metric_rows

    compared = report.comparison or []
    width = max(14, *(len(c.collection) + 2 for c in compared))
    rows = [f"Models compared on the same {report.images} images, ground truth {report.ground_truth}"]
    rows.append(f"{'':<22}" + "".join(f"{c.collection:>{width}}" for c in compared))
    tables = [
        metric_rows(report.model_copy(update={"text_to_image": c.text_to_image, "image_to_image": c.image_to_image}))
        for c in compared
    ]
    for column, direction in ((1, "t→i"), (2, "i→i")):
        for row, (name, *_) in enumerate(tables[0]):
            rows.append(f"{direction + ' ' + name:<22}" + "".join(f"{t[row][column]:>{width}.3f}" for t in tables))
    rows.append(f"{'images/s':<22}" + "".join(f"{c.images_per_second:>{width}.1f}" for c in compared))
    rows.append(f"{'text query ms':<22}" + "".join(f"{c.text_query_ms:>{width}.1f}" for c in compared))
    rows += [f"{c.collection}: {c.model} ({c.dim}-d, {c.precision})" for c in compared]
    if report.report_dir:
        rows.append(f"report written to {report.report_dir}")
    return "\n".join(rows)
