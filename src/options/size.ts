/**
 * Size strings in and out, the way QEMU 7.2 reads and prints them:
 * - `parseSize` is qemu_strtosz ("64k", "1.5G", "0x10000"), `cvtnum` is qemu-io's number parser;
 * - `cvtstr` is qemu-io's size printing ("1.500 KiB", "2 GiB"), `sizeToStr` is qemu-img's
 *   ("1.25 MiB", "1e+03 KiB");
 * - `formatFixed` / `formatGeneral` are C's `%.Nf` / `%.Ng` with glibc's exact rounding, which
 *   the printers above (and any other port of a printf format) need.
 */

import { BlkioError } from '../errors.js';
import type { WarningSink } from './types.js';

/** A failed size parse: code EINVAL (not a size) or ERANGE (too large), as qemu_strtosz returns. */
export class SizeError extends BlkioError {
  constructor(
    code: 'EINVAL' | 'ERANGE',
    /** The text that failed to parse. */
    readonly text: string,
  ) {
    super(code);
    this.name = 'SizeError';
  }
}

export type SizeSuffix = 'B' | 'K' | 'M' | 'G' | 'T' | 'P' | 'E';

const SUFFIX_SHIFT: Record<string, bigint> = { B: 0n, K: 10n, M: 20n, G: 30n, T: 40n, P: 50n, E: 60n };
const UINT64_LIMIT = 1n << 64n;
const INT64_MAX = (1n << 63n) - 1n;
const DBL_MIN = 2.2250738585072014e-308;

/** The result of C's strtoull() on a string. */
export interface ScannedInteger {
  /** Magnitude of the digits (strtoull returns 2^64 - magnitude for a negative sign). */
  value: bigint;
  negative: boolean;
  /** The magnitude does not fit in 64 bits (strtoull sets ERANGE). */
  overflow: boolean;
  /** Index just past the last digit. */
  end: number;
}

/**
 * C strtoull(): optional white space, an optional sign, then digits of `base`; base 16 takes an
 * optional `0x` prefix, base 0 picks hex for `0x`, octal for a leading `0`, else decimal.
 * Returns undefined when there are no digits (no conversion).
 */
export function scanUnsigned(text: string, base: 0 | 10 | 16): ScannedInteger | undefined {
  let pos = 0;
  while (pos < text.length && ' \t\n\v\f\r'.includes(text[pos])) pos++;
  const negative = text[pos] === '-';
  if (negative || text[pos] === '+') pos++;
  let radix: 8 | 10 | 16 = base === 16 ? 16 : 10;
  const hexPrefix = text[pos] === '0' && (text[pos + 1] === 'x' || text[pos + 1] === 'X')
    && HEX_DIGIT.test(text[pos + 2] ?? '');
  if ((base === 0 || base === 16) && hexPrefix) {
    radix = 16;
    pos += 2;
  } else if (base === 0 && text[pos] === '0') {
    radix = 8;
  }
  const run = DIGIT_RUN[radix];
  run.lastIndex = pos;
  const digits = run.exec(text)![0];
  if (digits.length === 0) return undefined;
  const value = BigInt(`${BIGINT_PREFIX[radix]}${digits}`);
  return { value, negative, overflow: value >= UINT64_LIMIT, end: pos + digits.length };
}

const HEX_DIGIT = /^[0-9a-f]$/i;
/**
 * The digits of each radix from a position on (sticky). One regular expression rather than a
 * per-character loop: V8 optimised such a loop's small digit function after a few dozen qemu-io
 * commands, and that one TurboFan compilation brought 3.5 MiB of the compiler's code into memory.
 */
const DIGIT_RUN = { 8: /[0-7]*/y, 10: /[0-9]*/y, 16: /[0-9a-f]*/iy };
const BIGINT_PREFIX = { 8: '0o', 10: '', 16: '0x' };

/**
 * qemu_strtosz exactly, as an unsigned 64-bit BigInt: decimal with an optional fraction and an
 * optional one-letter binary suffix (b k m g t p e, any case), or `0x` hex. Throws SizeError.
 * A hex number with a suffix is accepted with QEMU's deprecation warning.
 *
 * QEMU quirks kept on purpose: the fraction is read as a C double (so `0.9999999999999999999k`
 * is 0 and `1.999999999999999999k` is 1024); rounding is half up; a fraction whose strtod()
 * under- or overflows (`1.5e999k`, `1.5e-320k`) is dropped together with the character after
 * it, so both of those give 1 (QEMU reads past the string when nothing follows; we call that
 * garbage, as QEMU usually does).
 */
export function parseSizeBigInt(text: string, defaultSuffix: SizeSuffix = 'B', warn?: WarningSink): bigint {
  // Made only when thrown: an error captures a stack trace, and every command argument is parsed.
  const invalid = (): SizeError => new SizeError('EINVAL', text);
  const range = (): SizeError => new SizeError('ERANGE', text);
  const decimal = scanUnsigned(text, 10);
  if (!decimal) throw invalid();
  // Any error found before the end is reached still loses to trailing garbage (EINVAL).
  const fail = (error: () => SizeError, end: number): never => {
    throw end < text.length ? invalid() : error();
  };
  if (decimal.overflow) fail(range, decimal.end);
  if (decimal.negative) throw invalid();

  let value = decimal.value;
  let end = decimal.end;
  let fraction = 0n; // 64-bit fixed point
  let hex = false;
  if (value === 0n && (text[end] === 'x' || text[end] === 'X')) {
    const hexNumber = scanUnsigned(text, 16)!;
    if (hexNumber.overflow) fail(range, hexNumber.end);
    if (text[hexNumber.end] === '.') throw invalid();
    ({ value, end } = hexNumber);
    hex = true;
  } else if (text[end] === '.') {
    ({ fraction, end } = scanFraction(text, end, invalid));
  }

  let shift = end < text.length ? SUFFIX_SHIFT[text[end].toUpperCase()] : undefined;
  if (shift !== undefined) {
    if (hex) warn?.(`warning: Using a multiplier suffix on hex numbers is deprecated: ${text}`);
    end++;
  } else {
    shift = SUFFIX_SHIFT[defaultSuffix];
  }
  if (end !== text.length) throw invalid();
  if (shift === 0n) {
    if (fraction !== 0n) throw invalid(); // a fraction needs a unit larger than bytes
    return value;
  }
  const scaledFraction = fraction << shift;
  const rounding = (scaledFraction >> 63n) & 1n;
  const result = (value << shift) + (scaledFraction >> 64n) + rounding;
  if (result >= UINT64_LIMIT) throw range();
  return result;
}

/** Reads `.digits` at `dot` the way do_strtosz does (strtod), as a 64-bit fixed-point fraction. */
function scanFraction(text: string, dot: number, invalid: () => SizeError): { fraction: bigint; end: number } {
  const match = /^\.(\d+)([eE][+-]?\d+)?/.exec(text.slice(dot));
  if (!match) return { fraction: 0n, end: dot + 1 }; // "1.k" is 1k
  const value = Number(`0${match[0]}`);
  const strtodRange = value === Infinity || (value < DBL_MIN && /[1-9]/.test(match[1]));
  if (strtodRange) return { fraction: 0n, end: dot + match[0].length + 1 };
  if (match[2] !== undefined) throw invalid(); // exponents are not allowed
  return { fraction: doubleToUint64(value * 2 ** 64), end: dot + match[0].length };
}

/** C's (uint64_t) cast of a double in [0, 2^64] on x86-64: 2^64 itself wraps to 0. */
function doubleToUint64(value: number): bigint {
  return value >= 2 ** 64 ? 0n : BigInt(Math.trunc(value));
}

/**
 * qemu_strtosz as a JavaScript number. Results beyond 2^53 are returned only when the double
 * holds them exactly (e.g. `8E`); otherwise ERANGE, never a silently rounded size. Callers that
 * must tell such sizes apart use parseSizeBigInt.
 */
export function parseSize(text: string, defaultSuffix: SizeSuffix = 'B', warn?: WarningSink): number {
  return exactNumber(parseSizeBigInt(text, defaultSuffix, warn), text);
}

function exactNumber(value: bigint, text: string): number {
  const result = Number(value);
  if (BigInt(result) !== value) throw new SizeError('ERANGE', text);
  return result;
}

/** qemu-io's cvtnum: a size in bytes that must also fit in int64. Throws SizeError. */
export function cvtnum(text: string, warn?: WarningSink): number {
  const value = parseSizeBigInt(text, 'B', warn);
  if (value > INT64_MAX) throw new SizeError('ERANGE', text);
  return exactNumber(value, text);
}

/** The line qemu-io prints (on stdout) when cvtnum fails for argument `text`. */
export function cvtnumErrorText(text: string, error: unknown): string {
  const code = error instanceof BlkioError ? error.code : undefined;
  if (code === 'EINVAL') return `Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- ${text}`;
  if (code === 'ERANGE') return `Parsing error: argument too large -- ${text}`;
  return `Parsing error: ${text}`;
}

// ---------------------------------------------------------------------------------------------
// Printing: C printf with exact decimal rounding.

/** A finite double as the exact ratio numerator/denominator of `value * 10^power10`. */
function exactRatio(value: number, power10: number): [bigint, bigint] {
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat64(0, Math.abs(value));
  const high = view.getUint32(0);
  const biasedExponent = (high >>> 20) & 0x7ff;
  let mantissa = (BigInt(high & 0xfffff) << 32n) | BigInt(view.getUint32(4));
  let exponent = -1074; // subnormal
  if (biasedExponent !== 0) {
    mantissa |= 1n << 52n;
    exponent = biasedExponent - 1075;
  }
  let numerator = mantissa;
  let denominator = 1n;
  if (exponent >= 0) numerator <<= BigInt(exponent);
  else denominator <<= BigInt(-exponent);
  if (power10 >= 0) numerator *= 10n ** BigInt(power10);
  else denominator *= 10n ** BigInt(-power10);
  return [numerator, denominator];
}

/** |value| * 10^power10 rounded to an integer, ties to even (glibc in round-to-nearest mode). */
function roundScaled(value: number, power10: number): bigint {
  const [numerator, denominator] = exactRatio(value, power10);
  const quotient = numerator / denominator;
  const twiceRemainder = (numerator % denominator) * 2n;
  const roundUp = twiceRemainder > denominator || (twiceRemainder === denominator && (quotient & 1n) === 1n);
  return roundUp ? quotient + 1n : quotient;
}

/** floor(log10(|value|)) computed exactly, for a non-zero finite value. */
function decimalExponent(value: number): number {
  let exponent = Math.floor(Math.log10(Math.abs(value)));
  const atLeastPowerOf10 = (power: number): boolean => {
    const [numerator, denominator] = exactRatio(value, -power);
    return numerator >= denominator;
  };
  while (!atLeastPowerOf10(exponent)) exponent--;
  while (atLeastPowerOf10(exponent + 1)) exponent++;
  return exponent;
}

function signOf(value: number): string {
  return value < 0 || Object.is(value, -0) ? '-' : '';
}

/** printf's spelling of infinities and NaN, or undefined for finite values. */
function nonFinite(value: number): string | undefined {
  if (Number.isNaN(value)) return 'nan';
  if (!Number.isFinite(value)) return `${signOf(value)}inf`;
  return undefined;
}

/** Places a decimal point `decimals` digits from the right of a digit string, padding with zeros. */
function withDecimals(digits: string, decimals: number): string {
  if (decimals === 0) return digits;
  const padded = digits.padStart(decimals + 1, '0');
  return `${padded.slice(0, -decimals)}.${padded.slice(-decimals)}`;
}

/** C `printf("%.<decimals>f", value)`. */
export function formatFixed(value: number, decimals: number): string {
  return nonFinite(value) ?? signOf(value) + withDecimals(roundScaled(value, decimals).toString(), decimals);
}

/** C `printf("%.<precision>g", value)`: significant digits, trailing zeros removed. */
export function formatGeneral(value: number, precision: number): string {
  const special = nonFinite(value);
  if (special !== undefined) return special;
  if (value === 0) return `${signOf(value)}0`;
  const significant = Math.max(precision, 1);
  let exponent = decimalExponent(value);
  let digits = roundScaled(value, significant - 1 - exponent);
  if (digits === 10n ** BigInt(significant)) { // rounding carried into a new digit: 9.99 -> 10.0
    digits /= 10n;
    exponent++;
  }
  const text = digits.toString();
  const stripZeros = (s: string): string => (s.includes('.') ? s.replace(/\.?0+$/, '') : s);
  if (exponent < -4 || exponent >= significant) {
    const mantissa = stripZeros(withDecimals(text, significant - 1));
    const exponentText = String(Math.abs(exponent)).padStart(2, '0');
    return `${signOf(value)}${mantissa}e${exponent < 0 ? '-' : '+'}${exponentText}`;
  }
  return signOf(value) + stripZeros(withDecimals(text, significant - 1 - exponent));
}

const CVTSTR_UNITS: ReadonlyArray<readonly [number, string]> = [
  [2 ** 60, ' EiB'], [2 ** 50, ' PiB'], [2 ** 40, ' TiB'], [2 ** 30, ' GiB'], [2 ** 20, ' MiB'], [2 ** 10, ' KiB'],
];

/**
 * qemu-io's cvtstr: `%.3f` in the largest binary unit not above the value (`%f` for bytes),
 * then the first `.000` and everything after it is replaced by the unit, else the unit is
 * appended: `2 GiB`, `1023.938 MiB`, `512 bytes`, `1.500000 bytes`. Accepts fractional values
 * (rates).
 */
export function cvtstr(value: number): string {
  const unit = CVTSTR_UNITS.find(([size]) => value >= size);
  const [text, suffix] = unit
    ? [unitsFixed3(value, unit[0]), unit[1]]
    : [Number.isSafeInteger(value) && value >= 0 ? `${value}.000000` : formatFixed(value, 6), ' bytes'];
  const trim = text.indexOf('.000');
  return trim >= 0 ? text.slice(0, trim) + suffix : text + suffix;
}

/**
 * formatFixed(value / unit, 3), without the exact arithmetic when value * 1000 is a whole
 * multiple of the unit (most sizes): qemu-io's map prints hundreds of thousands of them.
 */
function unitsFixed3(value: number, unit: number): string {
  const thousandths = value * 1000;
  if (!Number.isSafeInteger(value) || !Number.isSafeInteger(thousandths) || thousandths % unit !== 0) {
    return formatFixed(value / unit, 3);
  }
  const scaled = thousandths / unit;
  return `${Math.floor(scaled / 1000)}.${String(scaled % 1000).padStart(3, '0')}`;
}

const SIZE_TO_STR_UNITS = ['', 'Ki', 'Mi', 'Gi', 'Ti', 'Pi', 'Ei'];

/**
 * qemu-img's size_to_str: `%0.3g` in the largest binary unit that keeps the value below 1000
 * of it (`64 MiB`, `1.25 MiB`, `0.977 KiB`; `%g` may even give `1e+03 KiB` for 999.5 KiB).
 */
export function sizeToStr(value: number): string {
  // The unit index is floor(log2(value * 1024 / 1000)) / 10, via frexp()'s binary exponent.
  const unitIndex = Math.trunc((frexpExponent(value / (1000 / 1024)) - 1) / 10);
  return `${formatGeneral(value / 2 ** (10 * unitIndex), 3)} ${SIZE_TO_STR_UNITS[unitIndex]}B`;
}

/** The exponent frexp() returns: value = f * 2^e with 0.5 <= f < 1 (0 for 0). */
function frexpExponent(value: number): number {
  if (value === 0) return 0;
  const [numerator, denominator] = exactRatio(value, 0);
  return numerator.toString(2).length - denominator.toString(2).length + 1;
}
