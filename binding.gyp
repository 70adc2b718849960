{
  "targets": [
    {
      "target_name": "blkio_native",
      "sources": ["native/blkio_native.c", "native/codecs.c", "native/buffers.c"],
      "cflags": ["-Wall", "-Wextra"],
      "libraries": ["-ldl", "-lpthread"]
    }
  ]
}
