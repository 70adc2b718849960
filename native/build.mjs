// `npm install` step: build the optional native addon (build/Release/blkio_native.node) with
// the node-gyp that npm ships. When headers for this node are installed beside it (distribution
// packages put them in <prefix>/include/node), node-gyp uses them instead of downloading them.
// blkio works without the addon (pure-JS file driver, Node's zlib and fzstd for qcow2 compression),
// so a failed build only prints a notice.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';

function build() {
  if (process.platform !== 'linux') return 'the addon is for Linux';
  const args = ['rebuild'];
  const prefix = dirname(dirname(process.execPath));
  if (existsSync(join(prefix, 'include', 'node', 'node_api.h'))) args.push(`--nodedir=${prefix}`);
  // npm names its node-gyp in npm_config_node_gyp for lifecycle scripts; otherwise try PATH.
  const gyp = process.env.npm_config_node_gyp;
  const command = gyp ? process.execPath : 'node-gyp';
  const result = spawnSync(command, gyp ? [gyp, ...args] : args, { stdio: 'inherit' });
  if (result.error) return result.error.message;
  return result.status === 0 ? undefined : `node-gyp exited with status ${result.status}`;
}

const failure = build();
if (failure) console.warn(`blkio: native addon not built (${failure}); the file driver and qcow2 compression use their pure-JS paths`);
