/* The qcow2 compression codecs (codecs.c): adds codecAvailable, compress and decompress to `exports`. */
#ifndef BLKIO_CODECS_H
#define BLKIO_CODECS_H

#include <node_api.h>

void register_codecs(napi_env env, napi_value exports);

#endif
