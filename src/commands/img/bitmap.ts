/**
 * `blkio img bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)...
 * [-b source_file [-F source_fmt]] [-g granularity] [--object ...] [--image-opts | -f fmt] filename bitmap`
 *
 * Runs the actions in command-line order on one persistent bitmap of an image opened
 * read-write without its backing chain; the image stores its bitmaps when it is closed.
 */
import { BlkioError, toBlkioError } from '../../errors.js';
import type { BlockNode } from '../../block/node.js';
import { addBitmap, clearBitmap, enableBitmap, mergeBitmap, removeBitmap } from '../../block/node-bitmaps.js';
import { imgCvtnum, openImg, runSubcommand, withLayer } from './common.js';
import { IMAGE_OPTS_OPTION, parseImgArgs } from './options.js';

type Action =
  | { op: 'add' | 'remove' | 'clear' | 'enable' | 'disable' }
  | { op: 'merge'; source: string };

const ACTION_OPTIONS = ['add', 'remove', 'clear', 'enable', 'disable'] as const;

export function imgBitmap(argv: string[]): Promise<number> {
  return runSubcommand(async () => {
    const actions: Action[] = [];
    let granularity = 0;
    let sourceFile: string | undefined;
    let sourceFormat: string | undefined;
    const { format, imageOpts, operands, objects } = parseImgArgs('bitmap', argv, {
      short: ':b:f:F:g:h',
      long: [
        IMAGE_OPTS_OPTION,
        ...ACTION_OPTIONS.map((name) => ({ name, hasArg: false, key: name })),
        { name: 'merge', hasArg: true, key: 'merge' },
        { name: 'granularity', hasArg: true, key: 'g' },
        { name: 'source-file', hasArg: true, key: 'b' },
        { name: 'source-format', hasArg: true, key: 'F' },
      ],
      own: (item) => {
        switch (item.key) {
          case 'b': sourceFile = item.value; return true;
          case 'F': sourceFormat = item.value; return true;
          case 'g': granularity = imgCvtnum('granularity', item.value); return true;
          case 'merge': actions.push({ op: 'merge', source: item.value }); return true;
          default:
            if (!(ACTION_OPTIONS as readonly string[]).includes(item.key)) return false;
            actions.push({ op: item.key as (typeof ACTION_OPTIONS)[number] });
            return true;
        }
      },
    });
    if (!actions.length) throw new BlkioError('EINVAL', 'Need at least one of --add, --remove, --clear, --enable, --disable, or --merge');
    if (granularity && !actions.some((a) => a.op === 'add')) throw new BlkioError('EINVAL', 'granularity only supported with --add');
    if (sourceFormat !== undefined && sourceFile === undefined) throw new BlkioError('EINVAL', '-F only supported with -b');
    if (sourceFile !== undefined && !actions.some((a) => a.op === 'merge')) {
      throw new BlkioError('EINVAL', 'Merge bitmap source file only supported with --merge');
    }
    if (operands.length !== 2) throw new BlkioError('EINVAL', 'Expecting filename and bitmap name');
    const [filename, name] = operands;

    return withLayer(objects, async (layer) => {
      // The bitmaps belong to this image, whatever its backing chain holds.
      const node = (await openImg(layer, { filename, format, imageOpts, noBacking: true })).node;
      let sourceNode = node;
      if (sourceFile !== undefined) {
        sourceNode = (await openImg(layer, { filename: sourceFile, format: sourceFormat, readOnly: true, noBacking: true })).node;
      }
      for (const action of actions) {
        try {
          await runAction(node, name, action, sourceNode, granularity);
        } catch (e) {
          const err = toBlkioError(e);
          throw new BlkioError(err.code, `Operation ${action.op} on bitmap ${name} failed: ${err.message}`, err.hints);
        }
      }
      return 0;
    });
  });
}

async function runAction(node: BlockNode, name: string, action: Action, sourceNode: BlockNode, granularity: number): Promise<void> {
  switch (action.op) {
    case 'add':
      // QEMU takes the granularity as a 32-bit number, 0 meaning the default.
      return addBitmap(node, name, { granularity: granularity ? granularity % 2 ** 32 : undefined, persistent: true, disabled: false });
    case 'remove': return removeBitmap(node, name);
    case 'clear': return clearBitmap(node, name);
    case 'enable': return enableBitmap(node, name, true);
    case 'disable': return enableBitmap(node, name, false);
    case 'merge': return mergeBitmap(node, name, sourceNode, action.source);
  }
}
