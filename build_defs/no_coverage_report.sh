#!/bin/sh
echo "bazel coverage is not supported in this offline set-up (its tools would be downloaded)" >&2
exit 1
