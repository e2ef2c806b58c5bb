#!/usr/bin/env bash
# Installs what `bazel build //...` / `bazel test //tests/...` need, from Debian 12's packages:
#   bazel-bootstrap     Bazel 4.2.3 itself (pulls a headless JDK)
#   bazel-rules-proto   @rules_proto (proto_library)
#   bazel-rules-java    @rules_java, loaded by Bazel's own @bazel_tools
# Nothing else is fetched: rules_cc is in third_party/, Python code comes from the venv.
# Idempotent: with every package present it only checks. Fails loudly when it cannot install
# (no apt-get, not root and no sudo): a silently skipped Bazel build would hide breakage.
set -euo pipefail

PACKAGES=(bazel-bootstrap bazel-rules-proto bazel-rules-java)
BAZEL_VERSION_PREFIX="4.2.3"

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]})); then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: Bazel set-up needs Debian 12 packages (${missing[*]}) but apt-get is not" \
         "available on this machine" >&2
    exit 1
  fi
  SUDO=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || {
      echo "error: installing ${missing[*]} needs root (no sudo found)" >&2; exit 1; }
    SUDO=(sudo)
  fi
  echo "install_bazel.sh: installing ${missing[*]}"
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
      "${PACKAGES[@]}" >/dev/null
fi

version=$(dpkg-query -W -f='${Version}' bazel-bootstrap)
if [[ $version != ${BAZEL_VERSION_PREFIX}* ]]; then
  echo "error: bazel-bootstrap $version installed; the WORKSPACE is written for" \
       "$BAZEL_VERSION_PREFIX (Debian 12)" >&2
  exit 1
fi
for dir in /usr/share/bazel/rules/proto /usr/share/bazel/rules/java /usr/share/bazel/platforms; do
  [[ -f $dir/WORKSPACE ]] || { echo "error: $dir/WORKSPACE missing after install" >&2; exit 1; }
done
echo "install_bazel.sh: Bazel $version (Debian) ready"
