/*
 * Helpers for large I/O buffers and tables, synchronous and cheap (no thread pool):
 *
 *   addressRemainder(view, modulus)         -> number   (the view's data address modulo `modulus`)
 *   sectorRunEnd(view, from, to, zero)      -> number   (first 512-byte sector in [from, to) that is
 *                                                        not all zero (zero: true) or is (zero: false);
 *                                                        `to` when there is none)
 *   steppedRunEnd(view, from, to, step)     -> number   (first big-endian 64-bit entry i in (from, to)
 *                                                        that is not entry[from] + (i - from) * step;
 *                                                        `to` when there is none)
 *   fillSteppedRun(view, from, to, hi, lo, step)         (big-endian 64-bit entries [from, to) set to
 *                                                        (hi << 32 | lo) + (i - from) * step)
 *
 * addressRemainder lets the TypeScript side start a buffer on a page boundary: the kernel copies
 * between the page cache and a buffer that starts just past one (where malloc puts large blocks)
 * at about half the speed. sectorRunEnd is convert's sparse detection, one call per run of
 * sectors instead of one JS step per sector.
 */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "blkio_native.h"

#define SECTOR 512

/* The view's bytes; throws a TypeError (and returns false) unless it is a TypedArray. */
static bool get_view(napi_env env, napi_value value, uint8_t **data, size_t *bytes) {
  bool is_typedarray = false;
  napi_typedarray_type type;
  size_t length;
  void *ptr;
  if (napi_is_typedarray(env, value, &is_typedarray) != napi_ok || !is_typedarray ||
      napi_get_typedarray_info(env, value, &type, &length, &ptr, NULL, NULL) != napi_ok ||
      type != napi_uint8_array) {
    napi_throw_type_error(env, NULL, "buffer must be a Uint8Array");
    return false;
  }
  *data = ptr;
  *bytes = length;
  return true;
}

/* An integer argument from 0 to `max`: get_integer's TypeError, else a RangeError `range_error` when outside. */
static bool get_count(napi_env env, napi_value value, const char *name, int64_t max, const char *range_error,
                      int64_t *out) {
  if (!get_integer(env, value, name, out)) return false;
  if (*out < 0 || *out > max) {
    napi_throw_range_error(env, NULL, range_error);
    return false;
  }
  return true;
}

static napi_value js_address_remainder(napi_env env, napi_callback_info info) {
  napi_value argv[2], result;
  uint8_t *data;
  size_t bytes;
  int64_t modulus;
  if (!get_args(env, info, 2, argv) || !get_view(env, argv[0], &data, &bytes)) return NULL;
  if (!get_count(env, argv[1], "modulus", INT32_MAX, "modulus must be a positive integer", &modulus)) return NULL;
  if (modulus == 0) {
    napi_throw_range_error(env, NULL, "modulus must be a positive integer");
    return NULL;
  }
  napi_create_int64(env, (int64_t)((uintptr_t)data % (uint64_t)modulus), &result);
  return result;
}

static bool sector_is_zero(const uint8_t *sector) {
  /* Data usually shows at either end of a sector. */
  if (sector[0] != 0 || sector[SECTOR - 1] != 0) return false;
  uint64_t any = 0;
  for (size_t i = 0; i < SECTOR; i += sizeof any) {
    uint64_t word;
    memcpy(&word, sector + i, sizeof word);
    any |= word;
  }
  return any == 0;
}

static napi_value js_sector_run_end(napi_env env, napi_callback_info info) {
  napi_value argv[4], result;
  uint8_t *data;
  size_t bytes;
  int64_t from, to;
  bool zero;
  if (!get_args(env, info, 4, argv) || !get_view(env, argv[0], &data, &bytes)) return NULL;
  if (!get_count(env, argv[2], "to", (int64_t)(bytes / SECTOR), "to must be a sector inside the buffer", &to)) return NULL;
  if (!get_count(env, argv[1], "from", to, "from must be a sector before to", &from)) return NULL;
  if (napi_get_value_bool(env, argv[3], &zero) != napi_ok) {
    napi_throw_type_error(env, NULL, "zero must be a boolean");
    return NULL;
  }
  int64_t i = from;
  while (i < to && sector_is_zero(data + i * SECTOR) == zero) i++;
  napi_create_int64(env, i, &result);
  return result;
}

static uint64_t load_be64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
  return v;
}

static napi_value js_stepped_run_end(napi_env env, napi_callback_info info) {
  napi_value argv[4], result;
  uint8_t *data;
  size_t bytes;
  int64_t from, to, step;
  if (!get_args(env, info, 4, argv) || !get_view(env, argv[0], &data, &bytes)) return NULL;
  if (!get_count(env, argv[2], "to", (int64_t)(bytes / 8), "to must be an entry inside the buffer", &to)) return NULL;
  if (!get_count(env, argv[1], "from", to - 1, "from must be an entry before to", &from)) return NULL;
  if (!get_count(env, argv[3], "step", INT64_C(1) << 53, "step must be a non-negative integer", &step)) return NULL;
  const uint8_t *entries = data;
  uint64_t expected = load_be64(entries + from * 8);
  int64_t i = from + 1;
  for (; i < to; i++) {
    expected += (uint64_t)step;
    if (load_be64(entries + i * 8) != expected) break;
  }
  napi_create_int64(env, i, &result);
  return result;
}

static void store_be64(uint8_t *p, uint64_t v) {
  for (int i = 7; i >= 0; i--, v >>= 8) p[i] = (uint8_t)v;
}

static napi_value js_fill_stepped_run(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  uint8_t *data;
  size_t bytes;
  int64_t from, to, hi, lo, step;
  if (!get_args(env, info, 6, argv) || !get_view(env, argv[0], &data, &bytes)) return NULL;
  if (!get_count(env, argv[2], "to", (int64_t)(bytes / 8), "to must be an entry inside the buffer", &to)) return NULL;
  if (!get_count(env, argv[1], "from", to, "from must be an entry before to", &from)) return NULL;
  if (!get_count(env, argv[3], "hi", UINT32_MAX, "hi must be a 32-bit word", &hi)) return NULL;
  if (!get_count(env, argv[4], "lo", UINT32_MAX, "lo must be a 32-bit word", &lo)) return NULL;
  if (!get_count(env, argv[5], "step", INT64_C(1) << 53, "step must be a non-negative integer", &step)) return NULL;
  uint64_t entry = (uint64_t)hi << 32 | (uint64_t)lo;
  for (int64_t i = from; i < to; i++, entry += (uint64_t)step) store_be64(data + i * 8, entry);
  return NULL;
}

void register_buffers(napi_env env, napi_value exports) {
  export_function(env, exports, "addressRemainder", js_address_remainder);
  export_function(env, exports, "sectorRunEnd", js_sector_run_end);
  export_function(env, exports, "steppedRunEnd", js_stepped_run_end);
  export_function(env, exports, "fillSteppedRun", js_fill_stepped_run);
}
