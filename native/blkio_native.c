/*
 * blkio's native helpers for the `file` protocol: the few file-system calls Node's fs lacks.
 *
 *   lseek(fd, offset, whence)            -> Promise<number>  (whence: SEEK_DATA or SEEK_HOLE)
 *   fallocate(fd, mode, offset, length)  -> Promise<void>    (mode: FALLOC_FL_* bits)
 *   ofdLock(fd, byte, lock)              -> void     (lock: take a shared lock on the byte, else drop it)
 *   ofdLockConflicts(fd, byte)           -> boolean  (another open file description locks the byte)
 *
 * lseek and fallocate run on libuv's thread pool (napi_create_async_work), never on the event
 * loop. The open-file-description locks (image locking, src/drivers/file-locks.ts) never block,
 * so they are plain synchronous calls.
 * A failing call rejects with an Error whose `code` is the errno name as Node's fs spells it
 * (ENXIO, EOPNOTSUPP shows as ENOTSUP, ...); the TypeScript side maps it to a BlkioError.
 * The qcow2 compression codecs live in codecs.c, the I/O buffer helpers in buffers.c; the same
 * addon exports them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <node_api.h>
#include <uv.h>

#include "blkio_native.h"

enum op { OP_LSEEK, OP_FALLOCATE };

struct request {
  napi_async_work work;
  napi_deferred deferred;
  enum op op;
  int fd;
  int mode; /* whence for lseek, mode for fallocate */
  int64_t offset;
  int64_t length;
  int64_t result;
  int error; /* errno of the failed call, 0 on success */
};

/* Runs on a thread-pool thread: no napi calls here. */
static void execute(napi_env env, void *data) {
  struct request *req = data;
  (void)env;
  if (req->op == OP_LSEEK) {
    off_t pos = lseek(req->fd, (off_t)req->offset, req->mode);
    req->result = pos;
    req->error = pos < 0 ? errno : 0;
    return;
  }
  int ret;
  do {
    ret = fallocate(req->fd, req->mode, (off_t)req->offset, (off_t)req->length);
  } while (ret < 0 && errno == EINTR);
  req->error = ret < 0 ? errno : 0;
}

void reject_with_code(napi_env env, napi_deferred deferred, const char *code_text, const char *message_text) {
  napi_value code, message, error;
  napi_create_string_utf8(env, code_text, NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, message_text, NAPI_AUTO_LENGTH, &message);
  napi_create_error(env, code, message, &error);
  napi_reject_deferred(env, deferred, error);
}

/* Back on the event loop: settle the promise and free the request. */
static void complete(napi_env env, napi_status status, void *data) {
  struct request *req = data;
  napi_value value;
  if (status != napi_ok) {
    reject_with_code(env, req->deferred, "ECANCELED", "native request cancelled");
  } else if (req->error != 0) {
    reject_with_code(env, req->deferred, uv_err_name(-req->error), strerror(req->error));
  } else {
    if (req->op == OP_LSEEK) {
      napi_create_int64(env, req->result, &value);
    } else {
      napi_get_undefined(env, &value);
    }
    napi_resolve_deferred(env, req->deferred, value);
  }
  napi_delete_async_work(env, req->work);
  free(req);
}

bool get_args(napi_env env, napi_callback_info info, size_t count, napi_value *argv) {
  size_t argc = count;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < count) {
    napi_throw_type_error(env, NULL, "missing arguments");
    return false;
  }
  return true;
}

bool get_integer(napi_env env, napi_value arg, const char *name, int64_t *out) {
  const double max_safe = 9007199254740992.0;
  double number;
  if (napi_get_value_double(env, arg, &number) != napi_ok || !(number >= -max_safe && number <= max_safe) ||
      number != (double)(int64_t)number) {
    char text[80];
    snprintf(text, sizeof text, "%s must be an integer", name);
    napi_throw_type_error(env, NULL, text);
    return false;
  }
  *out = (int64_t)number;
  return true;
}

/* Common part of both functions: parse (fd, mode, offset[, length]), queue the work. */
static napi_value submit(napi_env env, napi_callback_info info, enum op op, size_t argc_needed,
                         const char *const names[]) {
  napi_value argv[4];
  int64_t values[4] = {0, 0, 0, 0};
  if (!get_args(env, info, argc_needed, argv)) return NULL;
  for (size_t i = 0; i < argc_needed; i++) {
    if (!get_integer(env, argv[i], names[i], &values[i])) return NULL;
  }

  struct request *req = calloc(1, sizeof *req);
  if (!req) {
    napi_throw_error(env, "ENOMEM", "Cannot allocate memory");
    return NULL;
  }
  req->op = op;
  req->fd = (int)values[0];
  if (op == OP_LSEEK) {
    req->offset = values[1];
    req->mode = (int)values[2];
  } else {
    req->mode = (int)values[1];
    req->offset = values[2];
    req->length = values[3];
  }

  napi_value promise, resource_name;
  napi_create_promise(env, &req->deferred, &promise);
  napi_create_string_utf8(env, op == OP_LSEEK ? "blkio:lseek" : "blkio:fallocate", NAPI_AUTO_LENGTH,
                          &resource_name);
  if (napi_create_async_work(env, NULL, resource_name, execute, complete, req, &req->work) != napi_ok) {
    reject_with_code(env, req->deferred, "ENOMEM", "could not create native request");
    free(req);
  } else if (napi_queue_async_work(env, req->work) != napi_ok) {
    reject_with_code(env, req->deferred, "ENOMEM", "could not queue native request");
    napi_delete_async_work(env, req->work);
    free(req);
  }
  return promise;
}

static napi_value js_lseek(napi_env env, napi_callback_info info) {
  static const char *const names[] = {"fd", "offset", "whence"};
  return submit(env, info, OP_LSEEK, 3, names);
}

static napi_value js_fallocate(napi_env env, napi_callback_info info) {
  static const char *const names[] = {"fd", "mode", "offset", "length"};
  return submit(env, info, OP_FALLOCATE, 4, names);
}

/* Reads (fd, byte) and, when `flag` is given, a boolean third argument; throws a TypeError on bad input. */
static int get_lock_args(napi_env env, napi_callback_info info, int64_t *fd, int64_t *byte, bool *flag) {
  napi_value argv[3];
  if (!get_args(env, info, flag ? 3 : 2, argv)) return 0;
  if (!get_integer(env, argv[0], "fd", fd) || !get_integer(env, argv[1], "byte", byte)) return 0;
  if (flag && napi_get_value_bool(env, argv[2], flag) != napi_ok) {
    napi_throw_type_error(env, NULL, "lock must be a boolean");
    return 0;
  }
  return 1;
}

static napi_value js_ofd_lock(napi_env env, napi_callback_info info) {
  int64_t fd, byte;
  bool lock;
  if (!get_lock_args(env, info, &fd, &byte, &lock)) return NULL;
  /* OFD locks want l_pid 0: the designated initialiser zeroes it. */
  struct flock fl = {.l_type = lock ? F_RDLCK : F_UNLCK, .l_whence = SEEK_SET, .l_start = (off_t)byte, .l_len = 1};
  if (fcntl((int)fd, F_OFD_SETLK, &fl) < 0) {
    int error = errno;
    napi_throw_error(env, uv_err_name(-error), strerror(error));
  }
  return NULL;
}

static napi_value js_ofd_lock_conflicts(napi_env env, napi_callback_info info) {
  int64_t fd, byte;
  if (!get_lock_args(env, info, &fd, &byte, NULL)) return NULL;
  /* Asking for an exclusive lock finds any lock another description holds; our own never conflict. */
  struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = (off_t)byte, .l_len = 1};
  int ret = fcntl((int)fd, F_OFD_GETLK, &fl);
  napi_value result;
  /* A failed test counts as a conflict, as QEMU counts it. */
  napi_get_boolean(env, ret < 0 || fl.l_type != F_UNLCK, &result);
  return result;
}

void export_function(napi_env env, napi_value exports, const char *name, napi_callback callback) {
  napi_value fn;
  napi_create_function(env, name, NAPI_AUTO_LENGTH, callback, NULL, &fn);
  napi_set_named_property(env, exports, name, fn);
}

static void export_int(napi_env env, napi_value exports, const char *name, int value) {
  napi_value v;
  napi_create_int32(env, value, &v);
  napi_set_named_property(env, exports, name, v);
}

static napi_value init(napi_env env, napi_value exports) {
  export_function(env, exports, "lseek", js_lseek);
  export_function(env, exports, "fallocate", js_fallocate);
  export_function(env, exports, "ofdLock", js_ofd_lock);
  export_function(env, exports, "ofdLockConflicts", js_ofd_lock_conflicts);
  export_int(env, exports, "SEEK_DATA", SEEK_DATA);
  export_int(env, exports, "SEEK_HOLE", SEEK_HOLE);
  export_int(env, exports, "FALLOC_FL_KEEP_SIZE", FALLOC_FL_KEEP_SIZE);
  export_int(env, exports, "FALLOC_FL_PUNCH_HOLE", FALLOC_FL_PUNCH_HOLE);
  export_int(env, exports, "FALLOC_FL_ZERO_RANGE", FALLOC_FL_ZERO_RANGE);
  register_codecs(env, exports);
  register_buffers(env, exports);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
