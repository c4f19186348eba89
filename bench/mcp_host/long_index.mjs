// Index a large folder through clipsearch's MCP server with the official TypeScript SDK client at its default
// settings (60 s request timeout, no progress-based reset), as Claude Desktop-like hosts do, and report how long
// every call took. Usage: node long_index.mjs CLIPSEARCH_BIN FOLDER MODEL INDEX_DIR
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";

const [bin, folder, model, indexDir] = process.argv.slice(2);
const transport = new StdioClientTransport({
  command: bin,
  args: ["serve", "--root", folder, "--model", model],
  env: { ...process.env, CLIPSEARCH_INDEX_DIR: indexDir, HF_HUB_OFFLINE: "1" },
  stderr: "ignore",
});
const client = new Client({ name: "long-index-check", version: "1.0.0" });
const calls = [];
async function call(name, args) {
  const started = performance.now();
  const result = await client.callTool({ name, arguments: args }); // default options: 60 s timeout
  const seconds = (performance.now() - started) / 1000;
  calls.push({ name, seconds: Math.round(seconds * 100) / 100, error: !!result.isError });
  if (result.isError) throw new Error(`${name}: ${result.content[0].text}`);
  return result.structuredContent;
}

const begin = performance.now();
await client.connect(transport);
const first = await call("index_folder", { folder });
let job = first;
const searches = [];
while (job.state === "queued" || job.state === "running") {
  const listing = await call("index_status", { job_id: first.job_id, wait_seconds: 30 });
  job = listing.jobs[0];
  const found = await call("search_images_by_text", { query: "a rocket launching", k: 1000 });
  searches.push({ results: found.results.length, done_before: job.progress.done });
}
await client.close();
console.log(JSON.stringify({
  sdk: "@modelcontextprotocol/sdk", state: job.state, job_id: first.job_id, first_state: first.state,
  total_seconds: Math.round((performance.now() - begin) / 100) / 10,
  max_call_seconds: Math.max(...calls.map((c) => c.seconds)), calls: calls.length,
  report: job.report, searches, call_log: calls,
}));
