/*
 * qcow2 cluster compression with the system's libz.so.1 and libzstd.so.1, the libraries QEMU
 * links, so that compressed clusters come out byte-identical to QEMU's (Node's bundled zlib is a
 * different deflate implementation, and Node 20 has no zstd).
 *
 *   codecAvailable(type)              -> boolean          (type: 0 zlib, 1 zstd)
 *   compress(type, input, output)     -> Promise<number>  bytes written, -1 when they do not fit
 *   decompress(type, input, output)   -> Promise<boolean> whether `output` was filled the way
 *                                                        QEMU accepts a cluster
 *
 * The libraries are dlopen()ed on first use, with prototypes declared here, so no development
 * headers are needed; a missing library reads as "not available" and the caller falls back.
 * RTLD_DEEPBIND: the node binary exports its own zlib's symbols, and libz's internal calls
 * through its PLT must not land in that other implementation.
 *
 * The work runs on libuv's thread pool. Each pool thread keeps one deflate/inflate stream and
 * one zstd context and resets them per cluster: a reset stream produces the same bytes as a new
 * one, without allocating a few hundred KiB per cluster.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <node_api.h>

#include "blkio_native.h"

enum codec_type { CODEC_ZLIB = 0, CODEC_ZSTD = 1 };

/* ---- zlib ABI (zlib.h of 1.2.x; the z_stream layout is part of the stable ABI) ---- */

typedef struct {
  const uint8_t *next_in;
  unsigned avail_in;
  unsigned long total_in;
  uint8_t *next_out;
  unsigned avail_out;
  unsigned long total_out;
  const char *msg;
  void *state;
  void *zalloc;
  void *zfree;
  void *opaque;
  int data_type;
  unsigned long adler;
  unsigned long reserved;
} z_stream;

enum { Z_OK = 0, Z_STREAM_END = 1, Z_BUF_ERROR = -5, Z_FINISH = 4, Z_DEFLATED = 8 };

/* QEMU's qcow2 deflate: default level, raw deflate with a 4 KiB window, memLevel 9, default strategy. */
enum { QCOW2_ZLIB_LEVEL = -1, QCOW2_ZLIB_WINDOW_BITS = -12, QCOW2_ZLIB_MEM_LEVEL = 9, QCOW2_ZLIB_STRATEGY = 0 };

static struct {
  const char *(*zlibVersion)(void);
  int (*deflateInit2_)(z_stream *, int, int, int, int, int, const char *, int);
  int (*deflateReset)(z_stream *);
  int (*deflate)(z_stream *, int);
  int (*inflateInit2_)(z_stream *, int, const char *, int);
  int (*inflateReset)(z_stream *);
  int (*inflate)(z_stream *, int);
} zlib;

/* ---- zstd ABI (zstd.h of 1.4+/1.5; the contexts are opaque) ---- */

typedef struct {
  const void *src;
  size_t size;
  size_t pos;
} ZSTD_inBuffer;

typedef struct {
  void *dst;
  size_t size;
  size_t pos;
} ZSTD_outBuffer;

enum { ZSTD_e_end = 2, ZSTD_reset_session_only = 1 };

static struct {
  void *(*createCCtx)(void);
  size_t (*CCtx_reset)(void *, int);
  size_t (*compressStream2)(void *, ZSTD_outBuffer *, ZSTD_inBuffer *, int);
  void *(*createDCtx)(void);
  size_t (*DCtx_reset)(void *, int);
  size_t (*decompressStream)(void *, ZSTD_outBuffer *, ZSTD_inBuffer *);
  unsigned (*isError)(size_t);
} zstd;

static int have_zlib, have_zstd;

/* Resolve every name in `names` into the consecutive function pointers at `table`; all or nothing. */
static int load_library(const char *soname, const char *const names[], size_t count, void *table) {
  void *lib = dlopen(soname, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
  if (!lib) return 0;
  void (**slots)(void) = table;
  for (size_t i = 0; i < count; i++) {
    void *symbol = dlsym(lib, names[i]);
    if (!symbol) {
      dlclose(lib);
      memset(table, 0, count * sizeof *slots);
      return 0;
    }
    memcpy(&slots[i], &symbol, sizeof symbol);
  }
  return 1;
}

static void load_libraries(void) {
  static const char *const zlib_names[] = {"zlibVersion", "deflateInit2_", "deflateReset", "deflate",
                                           "inflateInit2_", "inflateReset", "inflate"};
  static const char *const zstd_names[] = {"ZSTD_createCCtx", "ZSTD_CCtx_reset", "ZSTD_compressStream2",
                                           "ZSTD_createDCtx", "ZSTD_DCtx_reset", "ZSTD_decompressStream",
                                           "ZSTD_isError"};
  _Static_assert(sizeof zlib == sizeof zlib_names / sizeof *zlib_names * sizeof(void (*)(void)), "zlib table");
  _Static_assert(sizeof zstd == sizeof zstd_names / sizeof *zstd_names * sizeof(void (*)(void)), "zstd table");
  have_zlib = load_library("libz.so.1", zlib_names, sizeof zlib_names / sizeof *zlib_names, &zlib);
  have_zstd = load_library("libzstd.so.1", zstd_names, sizeof zstd_names / sizeof *zstd_names, &zstd);
}

static int codec_available(int type) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, load_libraries);
  return type == CODEC_ZLIB ? have_zlib : type == CODEC_ZSTD ? have_zstd : 0;
}

/* ---- per-thread codec state ---- */

static __thread z_stream *thread_deflater, *thread_inflater;
static __thread void *thread_cctx, *thread_dctx;

/* A reset deflate stream with QEMU's parameters, or NULL when out of memory. */
static z_stream *deflater(void) {
  if (thread_deflater) return zlib.deflateReset(thread_deflater) == Z_OK ? thread_deflater : NULL;
  z_stream *strm = calloc(1, sizeof *strm);
  if (strm && zlib.deflateInit2_(strm, QCOW2_ZLIB_LEVEL, Z_DEFLATED, QCOW2_ZLIB_WINDOW_BITS, QCOW2_ZLIB_MEM_LEVEL,
                                 QCOW2_ZLIB_STRATEGY, zlib.zlibVersion(), (int)sizeof *strm) != Z_OK) {
    free(strm);
    strm = NULL;
  }
  return thread_deflater = strm;
}

static z_stream *inflater(void) {
  if (thread_inflater) return zlib.inflateReset(thread_inflater) == Z_OK ? thread_inflater : NULL;
  z_stream *strm = calloc(1, sizeof *strm);
  if (strm && zlib.inflateInit2_(strm, QCOW2_ZLIB_WINDOW_BITS, zlib.zlibVersion(), (int)sizeof *strm) != Z_OK) {
    free(strm);
    strm = NULL;
  }
  return thread_inflater = strm;
}

static void *compression_context(void) {
  if (!thread_cctx) thread_cctx = zstd.createCCtx();
  return thread_cctx && !zstd.isError(zstd.CCtx_reset(thread_cctx, ZSTD_reset_session_only)) ? thread_cctx : NULL;
}

static void *decompression_context(void) {
  if (!thread_dctx) thread_dctx = zstd.createDCtx();
  return thread_dctx && !zstd.isError(zstd.DCtx_reset(thread_dctx, ZSTD_reset_session_only)) ? thread_dctx : NULL;
}

/* ---- the codecs; each returns RESULT_NO_MEMORY when it cannot get its stream ---- */

enum { RESULT_DOES_NOT_FIT = -1, RESULT_NO_MEMORY = -2 };

static void set_buffers(z_stream *strm, const uint8_t *in, size_t in_len, uint8_t *out, size_t out_len) {
  strm->next_in = in;
  strm->avail_in = (unsigned)in_len;
  strm->next_out = out;
  strm->avail_out = (unsigned)out_len;
}

/* One deflate call to the end: the cluster fits only if the stream ended inside `out`. */
static int64_t zlib_compress(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_len) {
  z_stream *strm = deflater();
  if (!strm) return RESULT_NO_MEMORY;
  set_buffers(strm, in, in_len, out, out_len);
  if (zlib.deflate(strm, Z_FINISH) != Z_STREAM_END) return RESULT_DOES_NOT_FIT;
  return (int64_t)(out_len - strm->avail_out);
}

/*
 * The stored size is rounded up to sectors, so input may run past the deflate stream, or the
 * stream may go on past the cluster: either way the cluster is good once `out` is full.
 */
static int64_t zlib_decompress(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_len) {
  z_stream *strm = inflater();
  if (!strm) return RESULT_NO_MEMORY;
  set_buffers(strm, in, in_len, out, out_len);
  int ret = zlib.inflate(strm, Z_FINISH);
  return (ret == Z_STREAM_END || ret == Z_BUF_ERROR) && strm->avail_out == 0;
}

/* One streaming call that ends the frame (so its header records the size); anything left over means it did not fit. */
static int64_t zstd_compress(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_len) {
  void *cctx = compression_context();
  if (!cctx) return RESULT_NO_MEMORY;
  ZSTD_inBuffer input = {in, in_len, 0};
  ZSTD_outBuffer output = {out, out_len, 0};
  if (zstd.compressStream2(cctx, &output, &input, ZSTD_e_end) != 0) return RESULT_DOES_NOT_FIT;
  return (int64_t)output.pos;
}

/*
 * Decode frame after frame until `out` is full; a step without progress (input used up) or a
 * last frame that would produce more than the cluster makes the cluster bad.
 */
static int64_t zstd_decompress(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_len) {
  void *dctx = decompression_context();
  if (!dctx) return RESULT_NO_MEMORY;
  ZSTD_inBuffer input = {in, in_len, 0};
  ZSTD_outBuffer output = {out, out_len, 0};
  size_t ret = 0;
  while (output.pos < output.size) {
    size_t in_before = input.pos, out_before = output.pos;
    ret = zstd.decompressStream(dctx, &output, &input);
    if (zstd.isError(ret) || (input.pos == in_before && output.pos == out_before)) return 0;
  }
  return ret == 0;
}

/* ---- N-API glue ---- */

struct codec_request {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref input_ref, output_ref; /* keep both buffers alive while a pool thread uses them */
  int type, decompress;
  const uint8_t *in;
  size_t in_len;
  uint8_t *out;
  size_t out_len;
  int64_t result;
};

static void execute(napi_env env, void *data) {
  struct codec_request *req = data;
  (void)env;
  if (req->decompress) {
    req->result = req->type == CODEC_ZLIB ? zlib_decompress(req->in, req->in_len, req->out, req->out_len)
                                          : zstd_decompress(req->in, req->in_len, req->out, req->out_len);
  } else {
    req->result = req->type == CODEC_ZLIB ? zlib_compress(req->in, req->in_len, req->out, req->out_len)
                                          : zstd_compress(req->in, req->in_len, req->out, req->out_len);
  }
}

static void free_request(napi_env env, struct codec_request *req) {
  if (req->input_ref) napi_delete_reference(env, req->input_ref);
  if (req->output_ref) napi_delete_reference(env, req->output_ref);
  if (req->work) napi_delete_async_work(env, req->work);
  free(req);
}

static void complete(napi_env env, napi_status status, void *data) {
  struct codec_request *req = data;
  napi_value value;
  if (status != napi_ok) {
    reject_with_code(env, req->deferred, "ECANCELED", "native request cancelled");
  } else if (req->result == RESULT_NO_MEMORY) {
    reject_with_code(env, req->deferred, "ENOMEM", "Cannot allocate memory");
  } else {
    if (req->decompress) {
      napi_get_boolean(env, req->result == 1, &value);
    } else {
      napi_create_int64(env, req->result, &value);
    }
    napi_resolve_deferred(env, req->deferred, value);
  }
  free_request(env, req);
}

/* The bytes of a TypedArray (any kind) or Buffer; throws a TypeError otherwise. */
static int get_bytes(napi_env env, napi_value value, const char *name, uint8_t **data, size_t *length) {
  bool is_typed_array = false;
  napi_typedarray_type kind;
  size_t count, byte_offset;
  napi_value arraybuffer;
  void *base;
  if (napi_is_typedarray(env, value, &is_typed_array) == napi_ok && is_typed_array &&
      napi_get_typedarray_info(env, value, &kind, &count, &base, &arraybuffer, &byte_offset) == napi_ok &&
      kind == napi_uint8_array) {
    *data = base;
    *length = count;
    return 1;
  }
  char text[80];
  snprintf(text, sizeof text, "%s must be a Uint8Array", name);
  napi_throw_type_error(env, NULL, text);
  return 0;
}

static int get_type(napi_env env, napi_value value, int *type) {
  if (napi_get_value_int32(env, value, type) != napi_ok || (*type != CODEC_ZLIB && *type != CODEC_ZSTD)) {
    napi_throw_type_error(env, NULL, "type must be 0 (zlib) or 1 (zstd)");
    return 0;
  }
  return 1;
}

/* (type, input, output): queue the work; a missing library rejects with ENOTSUP. */
static napi_value submit(napi_env env, napi_callback_info info, int decompress) {
  napi_value argv[3];
  if (!get_args(env, info, 3, argv)) return NULL;
  struct codec_request *req = calloc(1, sizeof *req);
  if (!req) {
    napi_throw_error(env, "ENOMEM", "Cannot allocate memory");
    return NULL;
  }
  uint8_t *in;
  if (!get_type(env, argv[0], &req->type) || !get_bytes(env, argv[1], "input", &in, &req->in_len) ||
      !get_bytes(env, argv[2], "output", &req->out, &req->out_len)) {
    free(req);
    return NULL;
  }
  req->in = in;
  req->decompress = decompress;

  napi_value promise, resource_name;
  napi_create_promise(env, &req->deferred, &promise);
  if (!codec_available(req->type)) {
    reject_with_code(env, req->deferred, "ENOTSUP", "compression library not available");
    free_request(env, req);
    return promise;
  }
  napi_create_string_utf8(env, decompress ? "blkio:decompress" : "blkio:compress", NAPI_AUTO_LENGTH, &resource_name);
  if (napi_create_reference(env, argv[1], 1, &req->input_ref) != napi_ok ||
      napi_create_reference(env, argv[2], 1, &req->output_ref) != napi_ok ||
      napi_create_async_work(env, NULL, resource_name, execute, complete, req, &req->work) != napi_ok ||
      napi_queue_async_work(env, req->work) != napi_ok) {
    reject_with_code(env, req->deferred, "ENOMEM", "could not queue native request");
    free_request(env, req);
  }
  return promise;
}

static napi_value js_compress(napi_env env, napi_callback_info info) { return submit(env, info, 0); }

static napi_value js_decompress(napi_env env, napi_callback_info info) { return submit(env, info, 1); }

static napi_value js_codec_available(napi_env env, napi_callback_info info) {
  napi_value argv[1], result;
  int type;
  if (!get_args(env, info, 1, argv) || !get_type(env, argv[0], &type)) return NULL;
  napi_get_boolean(env, codec_available(type), &result);
  return result;
}

void register_codecs(napi_env env, napi_value exports) {
  export_function(env, exports, "codecAvailable", js_codec_available);
  export_function(env, exports, "compress", js_compress);
  export_function(env, exports, "decompress", js_decompress);
}
