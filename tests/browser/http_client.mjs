// The official TypeScript SDK client against `clipsearch serve --http` (tests/test_http.py starts the server):
// node http_client.mjs URL PHOTOS, the token in CLIPSEARCH_TOKEN. Runs the tool set over
// StreamableHTTPClientTransport with an Authorization header and prints what it saw as one JSON line.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, photos] = process.argv.slice(2);
const token = process.env.CLIPSEARCH_TOKEN;
const seen = {};

// The same endpoint without the header: refused.
const bare = await fetch(url, {
  method: "POST",
  headers: { "content-type": "application/json", accept: "application/json, text/event-stream" },
  body: JSON.stringify({
    jsonrpc: "2.0",
    id: 1,
    method: "initialize",
    params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "bare", version: "0" } },
  }),
});
seen.refused_without_token = bare.status;

const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${token}` } },
});
const client = new Client({ name: "clipsearch-ts-test", version: "1.0.0" });
await client.connect(transport);

async function call(name, args) {
  const result = await client.callTool({ name, arguments: args });
  if (result.isError) throw new Error(`${name}: ${result.content[0].text}`);
  return result;
}

const started = await call("index_folder", { folder: photos, wait_seconds: 0 });
const jobId = started.structuredContent.job_id;
let job = null;
for (let i = 0; i < 100; i++) {
  job = (await call("index_status", { job_id: jobId, wait_seconds: 10 })).structuredContent.jobs[0];
  if (job.state !== "queued" && job.state !== "running") break;
}
seen.job_state = job.state;
seen.indexed_total = job.report.indexed_total;

const found = await call("search_images_by_text", { query: "red", k: 3 });
seen.search_top_folders = found.structuredContent.results.map((h) => h.path.split("/").at(-2));
const similar = await call("search_similar_images", { image_path: `${photos}/blue/blue_0.jpg`, k: 1 });
seen.similar_top = similar.structuredContent.results[0].path;
const view = await call("view_image", { path: seen.similar_top });
seen.view_mime = view.content.find((c) => c.type === "image").mimeType;
let duplicates = null;
for (let i = 0; i < 100; i++) {
  duplicates = (await call("find_duplicates", {})).structuredContent;
  if (duplicates.state === "done") break;
  await call("index_status", { job_id: duplicates.job_id, wait_seconds: 10 });
}
seen.duplicates_state = duplicates.state;
seen.duplicates_images = duplicates.images;
const evaluated = await call("evaluate_retrieval", {});
seen.evaluate_queries = evaluated.structuredContent.text_to_image.queries;
const gallery = await client.readResource({ uri: "ui://clipsearch/gallery.html" });
seen.gallery_mime = gallery.contents[0].mimeType;
seen.gallery_start = gallery.contents[0].text.slice(0, 200);

await transport.terminateSession();
await client.close();
console.log(JSON.stringify(seen));
