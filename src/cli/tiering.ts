/**
 * V8 tiering for the copy loop of a long-running command (img convert, stream, commit, mirror).
 * The loop runs the same few dozen request functions once per chunk, and V8 would optimise them
 * after a few hundred requests: compiling them takes ~0.1 s of main-thread CPU, more than the JS
 * work of converting 1 GiB, and no request is issued meanwhile (callgrind, convert -O raw of
 * 1 GiB: 753 -> 463 million instructions). With a budget four times V8's default they stay in
 * the baseline tiers for the first few GiB and are optimised later on longer copies; small hot
 * loops (qcow2's mapping scans) are still optimised early.
 * V8 reads the flag whenever it renews a function's budget, so setting it at run time works;
 * on node's command line it would make V8 reject bin/blkio's code cache.
 */
import { lazyBuiltin } from '../lazy-builtin.js';

const v8 = lazyBuiltin<typeof import('node:v8')>('node:v8');

/** Four times V8's default --interrupt-budget (67 584 in Node 20). */
const COPY_LOOP_INTERRUPT_BUDGET = 4 * 67584;

export function tierForCopyLoop(): void {
  v8().setFlagsFromString(`--interrupt-budget=${COPY_LOOP_INTERRUPT_BUDGET}`);
}
