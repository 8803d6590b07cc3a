// Drives node-bandwidth (the v1 client from npm) for the contract tests.
// stdin: {"client": {userId, apiToken, apiSecret, baseUrl}, "steps": [{"op": ..., "args": ...}]}
// stdout: one JSON array, a result per step: {"ok": true, "value": ...} or
// {"ok": false, "error": {name, message, statusCode, limitReset, isUnexpectedResponseError,
// isRateLimitError}}. Steps run in order; a failed step does not stop the next ones.
"use strict";

const Bandwidth = require("node-bandwidth");

const MAX_PAGES = 50;

async function listAll(client, params) {
  // Follow getNextPage while the client says there is one (node re-issues the query with the
  // parameters of the Link rel="next" URL: catapult-v1.md 2).
  const pages = [];
  let page = await client.Message.list(params);
  for (;;) {
    pages.push({
      messages: page.messages,
      hasNextPage: page.hasNextPage,
      nextLink: page.nextLink,
    });
    if (!page.hasNextPage || pages.length >= MAX_PAGES) {
      return pages;
    }
    page = await page.getNextPage();
  }
}

const OPS = {
  send: (client, args) => client.Message.send(args),
  sendMultiple: (client, args) => client.Message.sendMultiple(args),
  get: (client, args) => client.Message.get(args),
  // Ruby and Java clients GET the message right after creating it (catapult-v1.md 1).
  sendAndGet: async (client, args) => {
    const sent = await client.Message.send(args);
    const got = await client.Message.get(sent.id);
    return { sent, got };
  },
  listAll,
};

function describe(error) {
  return {
    name: error && error.name,
    message: error && error.message,
    statusCode: error && error.statusCode,
    limitReset: error && error.limitReset,
    isUnexpectedResponseError: error instanceof Bandwidth.UnexpectedResponseError,
    isRateLimitError: error instanceof Bandwidth.RateLimitError,
  };
}

async function main() {
  const chunks = [];
  for await (const chunk of process.stdin) {
    chunks.push(chunk);
  }
  const request = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  const client = new Bandwidth(request.client);
  const results = [];
  for (const step of request.steps) {
    const op = OPS[step.op];
    if (!op) {
      throw new Error(`unknown op ${step.op}`);
    }
    try {
      results.push({ ok: true, value: await op(client, step.args) });
    } catch (error) {
      results.push({ ok: false, error: describe(error) });
    }
  }
  process.stdout.write(JSON.stringify(results) + "\n");
}

main().catch((error) => {
  process.stderr.write(String(error && error.stack ? error.stack : error) + "\n");
  process.exit(1);
});
