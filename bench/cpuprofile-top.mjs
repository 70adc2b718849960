#!/usr/bin/env node
// Summarises a V8 .cpuprofile (from `node --cpu-prof`): self time per function and per file,
// largest first, so hot spots are confirmed before code is changed.
// Also total time per function (self plus callees; async continuations count from where they
// resume). Several profiles (e.g. of repeated runs on a busy machine) are added up.
// Usage: node bench/cpuprofile-top.mjs [--top N] PROFILE.cpuprofile...
import fs from 'node:fs';

const args = process.argv.slice(2);
let top = 25;
const topAt = args.indexOf('--top');
if (topAt >= 0) top = Number(args.splice(topAt, 2)[1]) || top;
if (args.length === 0) {
  console.error('usage: cpuprofile-top.mjs [--top N] PROFILE.cpuprofile...');
  process.exit(2);
}

const byFunction = new Map();
const totalByFunction = new Map();
const byFile = new Map();
let total = 0;
const add = (map, key, micros) => map.set(key, (map.get(key) ?? 0) + micros);

for (const file of args) {
  const { nodes, samples, timeDeltas } = JSON.parse(fs.readFileSync(file, 'utf8'));
  // Each sample names the node on top of the stack; the gap to the next sample is its time.
  const selfMicros = new Map();
  for (let i = 0; i < samples.length; i++) add(selfMicros, samples[i], timeDeltas[i + 1] ?? 0);
  const byId = new Map(nodes.map((node) => [node.id, node]));
  const parent = new Map();
  for (const node of nodes) for (const child of node.children ?? []) parent.set(child, node.id);
  const keyOf = (node) => {
    const { functionName, url, lineNumber } = node.callFrame;
    const where = url ? url.replace(/^.*\//, '') : '';
    return `${functionName || '(anonymous)'} ${where}${where ? `:${lineNumber + 1}` : ''}`;
  };
  for (const node of nodes) {
    const micros = selfMicros.get(node.id) ?? 0;
    if (micros === 0) continue;
    total += micros;
    add(byFunction, keyOf(node), micros);
    const { functionName, url } = node.callFrame;
    add(byFile, url ? url.replace(/^.*\//, '') : functionName, micros);
    // Each function on the stack once, however deep its recursion.
    const onStack = new Set();
    for (let id = node.id; id !== undefined; id = parent.get(id)) onStack.add(keyOf(byId.get(id)));
    for (const key of onStack) add(totalByFunction, key, micros);
  }
}

function print(title, map) {
  console.log(`${title} (total ${(total / 1000).toFixed(1)} ms)`);
  for (const [key, micros] of [...map].sort((a, b) => b[1] - a[1]).slice(0, top)) {
    console.log(`  ${(micros / 1000).toFixed(1).padStart(9)} ms ${((100 * micros) / total).toFixed(1).padStart(5)}%  ${key}`);
  }
}
print('self time by function', byFunction);
print('total time by function', totalByFunction);
print('self time by file', byFile);
