#!/usr/bin/env bash
# Ferry's test command: installs every test dependency on a fresh Debian machine, then runs
# the format check, clippy and every test. `.ci/run` runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive for real: skopeo and podman (registry clients), docker.io
# (dockerd and containerd as mirror clients, run in a private network namespace), openssl (TLS
# certificates and the test token issuer's signatures), docker-registry (the CNCF reference
# registry: upstream in the tests, peer in the benchmark), wrk (the benchmark's load generator),
# apache2-utils (htpasswd: the bcrypt file of the peer's basic auth in the auth benchmark),
# time (/usr/bin/time: peak RSS in the GC benchmark), curl, iproute2, util-linux (nsenter) and
# systemd (systemd-analyze verifies deploy/systemd's unit).
packages=()
command -v skopeo >/dev/null || packages+=(skopeo)
command -v podman >/dev/null || packages+=(podman)
command -v openssl >/dev/null || packages+=(openssl)
command -v docker-registry >/dev/null || packages+=(docker-registry)
command -v wrk >/dev/null || packages+=(wrk)
command -v htpasswd >/dev/null || packages+=(apache2-utils)
command -v dockerd >/dev/null || packages+=(docker.io)
command -v curl >/dev/null || packages+=(curl)
[ -x /usr/bin/time ] || packages+=(time)
command -v ip >/dev/null || packages+=(iproute2)
command -v nsenter >/dev/null || packages+=(util-linux)
command -v systemd-analyze >/dev/null || packages+=(systemd)
# promtool (deploy/prometheus's rules and their unit tests) comes with Debian's prometheus; its
# recommends (the node exporter and more) are not needed.
lean=()
command -v promtool >/dev/null || lean+=(prometheus)
if [ ${#packages[@]} -gt 0 ] || [ ${#lean[@]} -gt 0 ]; then
  echo "== installing ${packages[*]} ${lean[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  if [ ${#packages[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${packages[@]}" >/dev/null
  fi
  if [ ${#lean[@]} -gt 0 ]; then
    # policy-rc.d refusing every start keeps the package's server from starting (it would
    # listen on every interface) on machines where systemd runs.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' | $sudo_cmd tee /usr/sbin/policy-rc.d >/dev/null
      $sudo_cmd chmod +x /usr/sbin/policy-rc.d
      DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${lean[@]}" >/dev/null
      $sudo_cmd rm -f /usr/sbin/policy-rc.d
    else
      DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${lean[@]}" >/dev/null
    fi
  fi
fi

# PyPI: moto, the S3-compatible server the S3 tests run against, boto3 and the aws CLI (the
# ECR API's real clients) and oras (oras-py, an OCI artifact client), in a venv outside the clone.
export FERRY_TEST_VENV="${FERRY_TEST_VENV:-/var/tmp/ferry-venv}"
if [ ! -x "$FERRY_TEST_VENV/bin/moto_server" ] || [ ! -x "$FERRY_TEST_VENV/bin/aws" ] \
  || ! "$FERRY_TEST_VENV/bin/python" -c 'import oras.client' 2>/dev/null; then
  echo "== installing moto, boto3, awscli and oras into $FERRY_TEST_VENV"
  python3 -m venv "$FERRY_TEST_VENV"
  "$FERRY_TEST_VENV/bin/pip" install -q 'moto[server]==5.2.5' boto3 awscli oras
fi

# crates.io: s3s-fs 0.14.1, the second S3-compatible server (on disk, so it survives a restart);
# newer versions need a newer Rust than these machines have, so it is pinned.
export FERRY_TEST_TOOLS="${FERRY_TEST_TOOLS:-/var/tmp/ferry-tools}"
if [ ! -x "$FERRY_TEST_TOOLS/bin/s3s-fs" ]; then
  echo "== installing s3s-fs into $FERRY_TEST_TOOLS (about 2 minutes)"
  cargo install s3s-fs@0.14.1 --features binary --locked --root "$FERRY_TEST_TOOLS" --quiet
fi

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
echo "== cargo test"
cargo test
echo "== the API, client, gc, integrity, malformed-request and pull-through suites again, on S3 (moto)"
FERRY_TEST_BACKEND=s3 cargo test --test it -- api:: clients:: gc:: integrity:: lifecycle:: malformed:: pull_through::
