"""The indexing tools: `index_folder` starts a job and answers within `wait_seconds`, `index_status` follows jobs,
`cancel_indexing` stops one. Most MCP hosts cut a tool call at about 60 s, so no call here blocks longer than 50 s;
the work goes on in the job layer (`indexing/jobs.py`). A find_duplicates comparison that outlasts its call is a job
too (id `d-...`, the service's `duplicate_tasks`): the same two tools follow and stop it."""

import time
from pathlib import Path
from typing import Annotated, Literal

import anyio
import anyio.to_thread
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, ToolAnnotations
from pydantic import Field

from server.indexing.jobs import ACTIVE, JobManager
from server.limits import (
    DEFAULT_COLLECTION,
    DEFAULT_WAIT_SECONDS,
    MAX_FOLDER_CHARS,
    MAX_JOB_ID_CHARS,
    WAIT_SECONDS,
)
from server.mcp_server.support import (
    PROGRESS_INTERVAL_SECONDS,
    CallProgress,
    CollectionName,
    ToolContext,
    run_core,
    tool_result,
)
from server.models.files import requested_model
from server.results import DuplicatesJob, IndexFolderResult, IndexReport, JobList, JobStatus, StoppedJob

WaitSeconds = Annotated[
    float,
    Field(
        **WAIT_SECONDS.schema(),
        description=f"Seconds to wait for the job to finish or change ({WAIT_SECONDS.least}-{WAIT_SECONDS.most})",
    ),
]
JobId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_JOB_ID_CHARS,
        description="A job_id from index_folder, find_duplicates ('d-...') or index_status",
    ),
]


def register(server: MCPServer, tools: ToolContext) -> None:
    """Add index_folder, index_status and cancel_indexing to `server`."""
    ClientRoots = tools.client_roots()
    jobs, watcher, access, downloads = tools.background.jobs, tools.background.watcher, tools.access, tools.downloads

    @server.tool(
        annotations=ToolAnnotations(title="Index a folder of images", destructive_hint=False, open_world_hint=False)
    )
    async def index_folder(
        folder: Annotated[str, Field(description="Absolute path of the folder whose images to index")],
        ctx: Context,
        client_roots: ClientRoots,
        collection: CollectionName = DEFAULT_COLLECTION,
        recursive: Annotated[bool, Field(description="Include subfolders")] = True,
        remove_missing: Annotated[
            bool, Field(description="Drop catalogued images under this folder that no longer exist")
        ] = True,
        index_type: Annotated[
            Literal["auto", "flat", "ivf"] | None,
            Field(
                description="Search index: 'flat' exact, 'ivf' approximate (fast for very large collections), "
                "'auto' switches to ivf from 150,000 images; omitted keeps the collection's setting"
            ),
        ] = None,
        model: Annotated[
            str | None,
            Field(
                max_length=MAX_FOLDER_CHARS,
                description="Model for a NEW collection: a Hugging Face id (see list_models, e.g. "
                "'google/siglip2-base-patch16-224' for better and multilingual search) or the absolute path of a "
                "checkpoint folder inside the allowed roots; omitted: the server's default. An existing collection "
                "always keeps the model it was built with",
            ),
        ] = None,
        precision: Annotated[
            Literal["fp32", "int8"] | None,
            Field(
                description="Vectors of a NEW collection: 'fp32' (default) or 'int8' (quantised model, about twice as "
                "fast to index and query on a CPU; measure its quality with evaluate_retrieval). An existing "
                "collection keeps its own",
            ),
        ] = None,
        ocr: Annotated[
            Literal["auto", "on", "off"] | None,
            Field(
                description="Text in photos (screenshots, receipts, signs), read after the embeddings so that "
                "search_text_in_images and the text filter find it: 'auto' (default for a new collection) reads "
                "the images a quick first pass finds text in, 'on' reads every image (slower, a little more "
                "recall), 'off' reads none; omitted keeps the collection's setting",
            ),
        ] = None,
        wait_seconds: WaitSeconds = DEFAULT_WAIT_SECONDS,
        watch: Annotated[
            bool | None,
            Field(
                description="true: keep the collection in sync with the folder while the server runs (new, changed, "
                "moved and deleted images applied within seconds); false: stop watching it; omitted: leave as is"
            ),
        ] = None,
    ) -> Annotated[CallToolResult, IndexFolderResult]:
        """Index (or re-index) a folder's images so they can be searched. Only new or changed files are embedded;
        renamed files keep their vectors; unreadable files are skipped and listed with the reason. Indexing runs
        as a background job: this waits up to wait_seconds, then returns the finished report (state 'done') or
        the job's progress (state 'running' or 'queued') and its job_id for index_status and cancel_indexing.
        Calling it again for a folder being indexed returns the same job."""
        guard = access.guard(client_roots)

        def start() -> JobStatus:
            chosen = requested_model(model, guard) if model is not None else None
            return jobs.start(
                folder,
                collection,
                recursive,
                remove_missing,
                index_type,
                guard,
                model=chosen,
                precision=precision,
                ocr=ocr,
            )

        status = await run_core(start)
        path = Path(status.folder)
        if watch:
            await run_core(lambda: watcher.watch(path, collection, recursive, remove_missing, guard))
        elif watch is False:
            await run_core(lambda: watcher.unwatch(path, collection))
        status = await _follow(jobs, status, wait_seconds, CallProgress(ctx, downloads))
        if status.state == "failed":
            raise ToolError(status.error or "Indexing failed.")
        result = _folder_result(status)
        result.watching = any(w.folder == status.folder and w.state == "watching" for w in watcher.watched())
        lines = [_describe(status)]
        if result.watching:
            lines.append("The folder is watched: changes to it are indexed within seconds while the server runs.")
        return tool_result(result, "\n".join(lines))

    @server.tool(
        annotations=ToolAnnotations(title="Indexing and duplicates status", read_only_hint=True, open_world_hint=False)
    )
    async def index_status(
        job_id: Annotated[
            str | None,
            Field(max_length=MAX_JOB_ID_CHARS, description="A job_id; omitted lists the recent jobs, newest first"),
        ] = None,
        wait_seconds: WaitSeconds = 0,
    ) -> Annotated[CallToolResult, JobList]:
        """The state of an indexing job (queued, running, done, failed, cancelled, interrupted), its progress and
        counts, and its report once done; or of a find_duplicates comparison (job_id 'd-...': running, done,
        cancelled, failed, with the images compared so far; once done, find_duplicates with the same arguments
        answers the groups at once). Without job_id, the last 20 indexing jobs (`jobs`) and this server's
        comparisons (`duplicates`). With wait_seconds, first waits (up to 50 s) for the job to change or finish
        (a comparison: to finish)."""
        tasks = await run_core(lambda: tools.get().duplicate_tasks)
        if job_id is not None and tasks.owns(job_id):
            one = await run_core(lambda: tasks.wait(job_id, wait_seconds) if wait_seconds else tasks.status(job_id))
            listing = JobList(jobs=[], duplicates=[one])
        else:
            if job_id is not None:
                await run_core(lambda: jobs.status(job_id))  # a bad id is an error before any waiting
            if wait_seconds:
                await run_core(lambda: jobs.wait(job_id, wait_seconds))
            listing = await run_core(lambda: JobList(jobs=[jobs.status(job_id)]) if job_id else jobs.recent())
            if job_id is None:
                listing.duplicates = tasks.recent()
        listing.watched = watcher.watched()
        lines = [_describe(status) for status in listing.jobs] + [_describe_duplicates(d) for d in listing.duplicates]
        lines = lines or ["No indexing jobs yet."]
        for watched in listing.watched:
            note = f" ({watched.note})" if watched.note else ""
            lines.append(f"Folder {watched.folder} → '{watched.collection}': {watched.state}{note}.")
        return tool_result(listing, "\n".join(lines))

    @server.tool(
        annotations=ToolAnnotations(
            title="Cancel indexing or a duplicates search",
            destructive_hint=False,
            idempotent_hint=True,
            open_world_hint=False,
        )
    )
    async def cancel_indexing(job_id: JobId) -> Annotated[CallToolResult, StoppedJob]:
        """Stop an indexing job at its next batch, or a find_duplicates comparison (job_id 'd-...'). Everything an
        indexing job committed stays searchable; running index_folder on the folder again later continues where it
        stopped. A stopped comparison keeps nothing: the next find_duplicates computes the groups anew. Cancelling
        a job that already ended changes nothing."""
        tasks = await run_core(lambda: tools.get().duplicate_tasks)
        if tasks.owns(job_id):
            stopped = await run_core(lambda: tasks.cancel(job_id))
            return tool_result(stopped, _describe_duplicates(stopped))
        status = await run_core(lambda: jobs.cancel(job_id))
        watcher.unwatch_job(job_id)
        return tool_result(status, _describe(status))


async def _follow(jobs: JobManager, status: JobStatus, seconds: float, progress: CallProgress) -> JobStatus:
    """Poll the job until it ends or `seconds` pass, sending progress notifications meanwhile."""
    deadline = time.monotonic() + seconds
    job_id = status.job_id
    while status.state in ACTIVE and time.monotonic() < deadline:
        await progress.job(status)
        await anyio.sleep(min(PROGRESS_INTERVAL_SECONDS, max(deadline - time.monotonic(), 0)))
        status = await anyio.to_thread.run_sync(lambda: jobs.status(job_id))
    await progress.job(status)
    return status


def _folder_result(status: JobStatus) -> IndexFolderResult:
    report = status.report.model_dump() if status.report is not None and status.state == "done" else {}
    return IndexFolderResult(
        state=status.state,
        job_id=status.job_id,
        collection=status.collection,
        folder=status.folder,
        progress=status.progress,
        next_step=_next_step(status),
        error=status.error,
        **{k: v for k, v in report.items() if k not in ("collection", "folder")},
    )


def _next_step(status: JobStatus) -> str:
    if status.state in ACTIVE:
        return (
            f"Call index_status with job_id='{status.job_id}' (wait_seconds up to {WAIT_SECONDS.most}) to follow it, "
            f"or cancel_indexing to stop it. Searches meanwhile see every committed batch."
        )
    if status.state in ("cancelled", "interrupted"):
        return "Call index_folder on the folder again to continue where it stopped."
    return "Search the collection with search_images_by_text or search_similar_images."


def _text_summary(report: IndexReport) -> str:
    if report.text_note:
        return f" {report.text_note}."
    if not report.text_to_read:
        return ""
    return (
        f" Text read in {report.text_read + report.text_first_pass_only} of {report.text_to_read} images "
        f"({report.text_found} hold text), {report.text_seconds:.1f} s."
    )


def _describe(status: JobStatus) -> str:
    """One paragraph for the person and the assistant reading the tool result."""
    where = f"{status.folder} into '{status.collection}'"
    if status.state == "done" and status.report is not None:
        r = status.report
        return (
            f"Indexed {r.folder} into '{r.collection}': {r.indexed_total} images in total; "
            f"{r.added} added, {r.updated} updated, {r.moved} moved, {r.unchanged} unchanged, "
            f"{r.removed} removed, {r.failed} failed; {r.seconds:.1f} s.{_text_summary(r)}"
        )
    p = status.progress
    counts = f"{p.done:,} of {p.to_process:,} new or changed images processed ({p.found:,} found)"
    if status.state == "running" and p.stage == "text":
        eta = f", about {p.text_eta_seconds:.0f} s left" if p.text_eta_seconds is not None else ""
        return (
            f"Job {status.job_id}: {counts} and searchable by description; now reading the text in them, "
            f"{p.text_done:,} of {p.text_to_read:,} images{eta}. {_next_step(status)}"
        )
    if status.state == "running":
        eta = f", about {p.eta_seconds:.0f} s left" if p.eta_seconds is not None else ""
        return f"Job {status.job_id}: indexing {where}, {counts}{eta}. {_next_step(status)}"
    if status.state == "queued":
        note = f" ({status.note})" if status.note else ""
        return f"Job {status.job_id}: queued to index {where}{note}. {_next_step(status)}"
    if status.state == "failed":
        return f"Job {status.job_id}: indexing {where} failed: {status.error}"
    note = f" ({status.note})" if status.note else ""
    return f"Job {status.job_id}: {status.state}{note}: {where}, {counts}. {_next_step(status)}"


def _describe_duplicates(job: DuplicatesJob) -> str:
    """One paragraph on a find_duplicates comparison."""
    scope = f"'{job.collection}'" + (f" under {job.folder}" if job.folder else "")
    counts = f"{job.progress.compared:,} of {job.progress.total:,} images compared"
    if job.state == "running":
        return f"Duplicates search {job.job_id}: comparing {scope}, {counts}. {job.next_step}"
    if job.state == "done":
        return f"Duplicates search {job.job_id}: done, {job.groups_total} groups in {scope}. {job.next_step}"
    if job.state == "failed":
        return f"Duplicates search {job.job_id} of {scope} failed: {job.error}. {job.next_step}"
    return (
        f"Duplicates search {job.job_id} of {scope}: cancelled ({job.note}) at {counts}; nothing of it is kept. "
        f"{job.next_step}"
    )
