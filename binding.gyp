{
  "targets": [
    {
      "target_name": "blkio_native",
      "sources": ["native/blkio_native.c"],
      "cflags": ["-Wall", "-Wextra"]
    }
  ]
}
