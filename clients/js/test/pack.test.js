// The published package works as installed: `npm pack` holds exactly what ships, and a fresh
// project that installs the tarball can import it from Node and type-check against it with tsc.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);
const PKG = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const TSC = join(PKG, "node_modules/typescript/bin/tsc");
const NPM = process.platform === "win32" ? "npm.cmd" : "npm";

test("npm pack ships the module, its types, README and package.json only", async () => {
  const { stdout } = await run(NPM, ["pack", "--dry-run", "--json", "--ignore-scripts"], { cwd: PKG });
  const [info] = JSON.parse(stdout);
  const files = info.files.map((f) => f.path).sort();
  assert.deepEqual(files, ["README.md", "package.json", "src/index.d.ts", "src/index.js"]);
});

test("the packed tarball installs into a fresh project, imports from Node and type-checks", async (t) => {
  assert.ok(existsSync(TSC), "typescript is missing: run `npm ci` in clients/js first");
  const dir = await mkdtemp(join(tmpdir(), "impush-client-pack-"));
  t.after(() => rm(dir, { recursive: true, force: true }));

  const { stdout } = await run(NPM, ["pack", "--json", "--ignore-scripts", "--pack-destination", dir], {
    cwd: PKG,
  });
  const tarball = join(dir, JSON.parse(stdout)[0].filename);
  const app = join(dir, "app");
  await run("mkdir", [app]);
  await writeFile(join(app, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
  // The package has no dependencies, so installing its tarball needs no registry.
  await run(NPM, ["install", "--offline", "--no-audit", "--no-fund", "--ignore-scripts", tarball], { cwd: app });
  const installed = JSON.parse(await readFile(join(app, "node_modules/impush-client/package.json"), "utf8"));
  assert.equal(installed.name, "impush-client");

  // Node: the ES module, and package.json through its explicit export.
  await writeFile(
    join(app, "main.mjs"),
    [
      'import { ImpushClient, CloseCodes, ImpushClientError } from "impush-client";',
      'import { createRequire } from "node:module";',
      'const pkg = createRequire(import.meta.url)("impush-client/package.json");',
      "const im = new ImpushClient({ getUrl: () => 'ws://127.0.0.1:1/ws', WebSocket: class {}, autoConnect: false });",
      "console.log(JSON.stringify({ state: im.state, kicked: CloseCodes.KICKED, err: typeof ImpushClientError, name: pkg.name }));",
    ].join("\n"),
  );
  const out = await run(process.execPath, ["main.mjs"], { cwd: app });
  assert.deepEqual(JSON.parse(out.stdout), {
    state: "disconnected",
    kicked: 4001,
    err: "function",
    name: "impush-client",
  });

  // TypeScript, resolving the package the way a Node ESM project does (exports -> types).
  await writeFile(
    join(app, "main.ts"),
    [
      'import { ImpushClient, type ReceiptFrame } from "impush-client";',
      "const im = new ImpushClient({ getUrl: async () => 'ws://127.0.0.1:1/ws', autoAck: true });",
      "im.on('receipt', (r: ReceiptFrame) => { const to: string[] = r.to; void to; });",
      "const ok: boolean = im.ack('id');",
      "void ok;",
      "// @ts-expect-error: types came through, so unknown events are refused",
      "im.on('nope', () => {});",
    ].join("\n"),
  );
  await writeFile(
    join(app, "tsconfig.json"),
    JSON.stringify({
      compilerOptions: { strict: true, noEmit: true, module: "nodenext", moduleResolution: "nodenext", target: "es2022", lib: ["es2022", "dom"], types: [] },
      files: ["main.ts"],
    }),
  );
  await run(process.execPath, [TSC, "-p", "tsconfig.json"], { cwd: app }).catch((err) => {
    assert.fail(`tsc over the installed package failed:\n${err.stdout}${err.stderr}`);
  });
});
