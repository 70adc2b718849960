/**
 * Plain data shapes the option parsers produce. They mirror QEMU's QObject world: an
 * `OptionTree` is a QDict that may nest (what keyval and JSON give), `FlatOptions` is the
 * flat QDict with dotted keys the block layer passes around (`file.driver`).
 */

/**
 * A leaf value. Keyval and QemuOpts produce only strings; JSON also gives the other kinds, with
 * integers beyond 2^53 that fit int64 or uint64 kept exact as bigints (QEMU's QNum).
 */
export type OptionScalar = string | number | bigint | boolean | null;

/** A nested option dictionary (QDict): objects, arrays (QList) and scalars. */
export interface OptionTree {
  [key: string]: OptionValue;
}

export type OptionValue = OptionTree | OptionValue[] | OptionScalar;

/** An empty object or list: QEMU's qdict_flatten keeps these as values of a flat QDict. */
export type EmptyContainer = Record<string, never> | never[];

/** A value of a flat option QDict: a scalar, or an empty object or list (JSON only). */
export type FlatValue = OptionScalar | EmptyContainer;

/** QEMU's flat option QDict: nested levels are spelled as dotted keys (`children.0.file.filename`). */
export type FlatOptions = Record<string, FlatValue>;

/**
 * Receives a warning exactly as QEMU prints it after the program prefix: the first line starts
 * with `warning: `, further lines (printed by QEMU without prefix) follow after `\n`.
 * The caller prints `<program>: ` + message.
 */
export type WarningSink = (message: string) => void;
