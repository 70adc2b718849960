/**
 * The `blkio` command: qemu-io (`io`), qemu-img (`img`), the qemu-io commands as direct
 * subcommands (`blkio read IMG ...`), graph printing and jobs. Each subcommand parses its own
 * arguments the way the QEMU tool it mirrors does; commander only lists them and handles the
 * rest (help, version, demo, unknown commands), so it is loaded only for those.
 */
import { reportError, runCli } from './run.js';

type Runner = (argv: string[]) => Promise<number>;

interface PassThroughCommand {
  name: string;
  summary: string;
  load: () => Promise<Runner>;
}

const DIRECT_IO_COMMANDS = ['read', 'write', 'map', 'alloc', 'discard', 'info', 'length'] as const;

const PASS_THROUGH: PassThroughCommand[] = [
  { name: 'io', summary: 'qemu-io compatible command interpreter: blkio io [options] [-c CMD]... [image]', load: async () => (await import('./io.js')).runIo },
  { name: 'img', summary: 'qemu-img compatible image tool: blkio img <create|info|map|check|compare|...>', load: async () => (await import('./img.js')).runImg },
  { name: 'graph', summary: 'open a graph and print it as a tree or as --blockdev/json definitions', load: async () => (await import('./graph.js')).runGraph },
  { name: 'stream', summary: 'copy the backing chain (down to --base) into the image: blkio stream [-p] [--base FILE] IMAGE', load: async () => (await import('./jobs.js')).runStream },
  { name: 'commit', summary: 'write the image into its backing file (qemu-img commit): blkio commit [-p] [-b BASE] [-d] IMAGE', load: async () => (await import('./jobs.js')).runCommit },
  { name: 'mirror', summary: 'copy the image to a new one while it stays in use: blkio mirror [-p] --target FILE [--sync=full|top|none] IMAGE', load: async () => (await import('./jobs.js')).runMirror },
  ...DIRECT_IO_COMMANDS.map((cmd) => ({
    name: cmd,
    summary: `qemu-io '${cmd}' on an image: blkio ${cmd} IMAGE [${cmd} arguments]`,
    load: async (): Promise<Runner> => {
      const { runDirect } = await import('./io.js');
      return (argv) => runDirect(cmd, argv);
    },
  })),
];

async function runPassThrough(command: PassThroughCommand, args: string[]): Promise<void> {
  const run = await command.load();
  process.exitCode = await runCli(() => run(args));
}

async function runWithCommander(): Promise<void> {
  const { Command } = await import('commander');
  const program = new Command('blkio')
    .description("QEMU's block layer in TypeScript: node graphs of formats, protocols and filters")
    .version('blkio 0.1.0', '-V, --version')
    .enablePositionalOptions()
    .showHelpAfterError();
  for (const command of PASS_THROUGH) {
    program
      .command(command.name)
      .summary(command.summary)
      .helpOption(false)
      .allowUnknownOption()
      .allowExcessArguments()
      .passThroughOptions()
      .argument('[args...]')
      .action((args: string[]) => runPassThrough(command, args));
  }
  program
    .command('demo')
    .summary('show copy-on-read on an embedded example in a temporary directory')
    .action(async () => {
      const { runDemo } = await import('./demo.js');
      process.exitCode = await runCli(runDemo);
    });
  await program.parseAsync(process.argv);
}

async function main(): Promise<void> {
  const [name, ...rest] = process.argv.slice(2);
  const command = PASS_THROUGH.find((c) => c.name === name);
  if (command === undefined) return runWithCommander();
  // As commander would: a `--` right after the subcommand name ends blkio's own options.
  return runPassThrough(command, rest[0] === '--' ? rest.slice(1) : rest);
}

main().catch((e: unknown) => {
  reportError(e);
  process.exitCode = 1;
});
