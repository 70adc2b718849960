{
  "targets": [
    {
      "target_name": "blkio_native",
      "sources": ["native/blkio_native.c", "native/codecs.c"],
      "cflags": ["-Wall", "-Wextra"],
      "libraries": ["-ldl", "-lpthread"]
    }
  ]
}
