/**
 * The `blkio` command: qemu-io (`io`), qemu-img (`img`), the qemu-io commands as direct
 * subcommands (`blkio read IMG ...`), graph printing and jobs. Each subcommand parses its own
 * arguments the way the QEMU tool it mirrors does; commander only dispatches and lists them.
 */
import { Command } from 'commander';
import { runCli } from './run.js';

const DIRECT_IO_COMMANDS = ['read', 'write', 'map', 'alloc', 'discard', 'info', 'length'] as const;

const program = new Command('blkio')
  .description("QEMU's block layer in TypeScript: node graphs of formats, protocols and filters")
  .version('blkio 0.1.0', '-V, --version')
  .enablePositionalOptions()
  .showHelpAfterError();

function passThrough(name: string, summary: string, load: () => Promise<(argv: string[]) => Promise<number>>): void {
  program
    .command(name)
    .summary(summary)
    .helpOption(false)
    .allowUnknownOption()
    .allowExcessArguments()
    .passThroughOptions()
    .argument('[args...]')
    .action(async (args: string[]) => {
      const run = await load();
      process.exitCode = await runCli(() => run(args));
    });
}

passThrough('io', 'qemu-io compatible command interpreter: blkio io [options] [-c CMD]... [image]', async () => (await import('./io.js')).runIo);
passThrough('img', 'qemu-img compatible image tool: blkio img <create|info|map|check|compare|...>', async () => (await import('./img.js')).runImg);
passThrough('graph', 'open a graph and print it as a tree or as --blockdev/json definitions', async () => (await import('./graph.js')).runGraph);
passThrough('stream', 'copy the backing chain (down to --base) into the image: blkio stream [-p] [--base FILE] IMAGE', async () => (await import('./jobs.js')).runStream);
passThrough('commit', 'write the image into its backing file (qemu-img commit): blkio commit [-p] [-b BASE] [-d] IMAGE', async () => (await import('./jobs.js')).runCommit);
passThrough('mirror', 'copy the image to a new one while it stays in use: blkio mirror [-p] --target FILE [--sync=full|top|none] IMAGE', async () => (await import('./jobs.js')).runMirror);
program
  .command('demo')
  .summary('show copy-on-read on an embedded example in a temporary directory')
  .action(async () => {
    const { runDemo } = await import('./demo.js');
    process.exitCode = await runCli(runDemo);
  });
for (const cmd of DIRECT_IO_COMMANDS) {
  passThrough(cmd, `qemu-io '${cmd}' on an image: blkio ${cmd} IMAGE [${cmd} arguments]`, async () => {
    const { runDirect } = await import('./io.js');
    return (argv) => runDirect(cmd, argv);
  });
}

await program.parseAsync(process.argv);
