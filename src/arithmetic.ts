/** Rounding of offsets and sizes (non-negative integers) to a multiple of an alignment. */

export function roundDown(n: number, align: number): number {
  return n - (n % align);
}

/** Exact wherever the result is a safe integer: no division, and no sum past the result. */
export function roundUp(n: number, align: number): number {
  const rem = n % align;
  return rem === 0 ? n : n + (align - rem);
}
