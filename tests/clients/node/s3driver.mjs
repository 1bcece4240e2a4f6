// Drives the AWS SDK for JavaScript v3 for tests/clients/test_node_sdk.py.
//
//   node s3driver.mjs '<json steps>'
//
// Connection settings come from the environment the test sets: CT_ENDPOINT, CT_ACCESS_KEY,
// CT_SECRET_KEY, CT_REGION. The client is configured explicitly (endpoint, path-style, region,
// static credentials), so nothing is read from ~/.aws.
//
// Steps (a JSON array, run in order; stdout gets one JSON object {"results": [...]}):
//   {"op": "put-stream", "bucket", "key", "file"}        PutObject, Body = fs.createReadStream
//   {"op": "upload", "bucket", "key", "file", "partSize", "queueSize"}   lib-storage Upload
//   {"op": "get", "bucket", "key", "file", "range"?}     GetObject (optionally ranged) to a file
// Every step's result carries the headers the SDK actually sent on its requests (after signing),
// so the test can tell that a body really went aws-chunked with a trailing checksum.
// On an error the process prints {"error": {name, message, code, status}} and exits 1.

import { createReadStream, createWriteStream } from "node:fs";
import { pipeline } from "node:stream/promises";

import { GetObjectCommand, PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { Upload } from "@aws-sdk/lib-storage";

const WATCHED = [
  "content-encoding",
  "content-length",
  "transfer-encoding",
  "x-amz-content-sha256",
  "x-amz-decoded-content-length",
  "x-amz-trailer",
  "x-amz-sdk-checksum-algorithm",
  "content-md5",
];

function makeClient(sent) {
  const client = new S3Client({
    endpoint: process.env.CT_ENDPOINT,
    region: process.env.CT_REGION || "us-east-1",
    forcePathStyle: true,
    credentials: {
      accessKeyId: process.env.CT_ACCESS_KEY,
      secretAccessKey: process.env.CT_SECRET_KEY,
    },
    maxAttempts: 1,
  });
  // Record what goes on the wire: after signing, so the payload mode is the final one.
  client.middlewareStack.add(
    (next) => async (args) => {
      const req = args.request;
      const headers = {};
      for (const [name, value] of Object.entries(req.headers || {})) {
        const lower = name.toLowerCase();
        if (WATCHED.includes(lower) || lower.startsWith("x-amz-checksum-")) {
          headers[lower] = value;
        }
      }
      sent.push({ method: req.method, path: req.path, query: req.query || {}, headers });
      return next(args);
    },
    { step: "finalizeRequest", priority: "low", name: "ctRecordSentHeaders" },
  );
  return client;
}

async function putStream(client, step) {
  const out = await client.send(
    new PutObjectCommand({ Bucket: step.bucket, Key: step.key, Body: createReadStream(step.file) }),
  );
  return { etag: out.ETag };
}

async function upload(client, step) {
  const up = new Upload({
    client,
    params: { Bucket: step.bucket, Key: step.key, Body: createReadStream(step.file) },
    partSize: step.partSize ?? 5 * 1024 * 1024,
    queueSize: step.queueSize ?? 2,
    leavePartsOnError: false,
  });
  const out = await up.done();
  return { etag: out.ETag };
}

async function get(client, step) {
  const params = { Bucket: step.bucket, Key: step.key };
  if (step.range) params.Range = step.range;
  const out = await client.send(new GetObjectCommand(params));
  await pipeline(out.Body, createWriteStream(step.file));
  return {
    status: out.$metadata.httpStatusCode,
    contentLength: out.ContentLength,
    contentRange: out.ContentRange ?? null,
    etag: out.ETag,
  };
}

const OPS = { "put-stream": putStream, upload, get };

async function main() {
  const steps = JSON.parse(process.argv[2]);
  const results = [];
  for (const step of steps) {
    const sent = [];
    const client = makeClient(sent);
    try {
      const op = OPS[step.op];
      if (!op) throw new Error(`unknown op ${step.op}`);
      results.push({ op: step.op, ...(await op(client, step)), sent });
    } finally {
      client.destroy();
    }
  }
  process.stdout.write(JSON.stringify({ results }) + "\n");
}

main().catch((err) => {
  const error = {
    name: err?.name,
    message: err?.message,
    code: err?.Code ?? err?.code,
    status: err?.$metadata?.httpStatusCode,
  };
  process.stdout.write(JSON.stringify({ error }) + "\n");
  process.exit(1);
});
