/* What the addon's files share: blkio_native.c (file helpers, module init), codecs.c and buffers.c. */
#ifndef BLKIO_NATIVE_H
#define BLKIO_NATIVE_H

#include <stdbool.h>
#include <stdint.h>

#include <node_api.h>

/* The call's first `count` arguments into `argv`; throws a TypeError (and returns false) when fewer were given. */
bool get_args(napi_env env, napi_callback_info info, size_t count, napi_value *argv);

/* A safe integer (|n| <= 2^53) from a JS number; throws a TypeError (and returns false) otherwise. */
bool get_integer(napi_env env, napi_value arg, const char *name, int64_t *out);

/* Rejects `deferred` with an Error carrying `code` (an errno name) and `message`. */
void reject_with_code(napi_env env, napi_deferred deferred, const char *code, const char *message);

/* Sets exports[name] to a native function. */
void export_function(napi_env env, napi_value exports, const char *name, napi_callback callback);

/* Adds the qcow2 codecs (codecAvailable, compress, decompress) to `exports`. */
void register_codecs(napi_env env, napi_value exports);

/* Adds the buffer helpers (addressRemainder, sectorRunEnd, steppedRunEnd) to `exports`. */
void register_buffers(napi_env env, napi_value exports);

#endif
