#!/usr/bin/env python3
"""Checks of the Quiver Helm chart that schemas cannot make; run by scripts/check-helm.sh.

  check-helm-manifests.py manifests <chart> <values file> <rendered manifests> <namespace>
      How the rendered pieces fit together: Searcher ids and advertised addresses against the
      headless Service, the etcd endpoints against the etcd members, --initial-cluster,
      probes, grace periods, Services and PodDisruptionBudgets against the pods they select,
      the HorizontalPodAutoscaler against the Deployment.

  check-helm-manifests.py documentation <chart>
      Every value in values.yaml has a `# --` description there and a row in the README.

Needs PyYAML (kubernetes-validate's virtual environment has it). Prints one line per check
passed; exits 1 when any failed.
"""

import re
import sys
from pathlib import Path

import yaml

FAILURES = []


def check(condition, what):
    if condition:
        print(f"  ok   {what}")
    else:
        FAILURES.append(what)
        print(f"\033[1;31mFAIL\033[0m {what}", file=sys.stderr)


def deep_merge(base, override):
    merged = dict(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def env_of(container):
    return {entry["name"]: entry.get("value") for entry in container.get("env", [])}


def env_names(container):
    return [entry["name"] for entry in container.get("env", [])]


def one(resources, kind, component):
    found = [
        resource
        for resource in resources
        if resource["kind"] == kind
        and resource["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]
    return found[0] if len(found) == 1 else None


def selects(selector, labels):
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def check_grpc_probe(container, probe_name, probe_values, port, who):
    probe = container.get(probe_name)
    if not probe_values["enabled"]:
        check(probe is None, f"{who}: no {probe_name} (disabled)")
        return
    check(
        probe is not None
        and probe.get("grpc", {}).get("port") == port
        and probe["grpc"].get("service", "") == probe_values["service"],
        f"{who}: {probe_name} is a gRPC probe on port {port}, health service {probe_values['service']!r}",
    )


def check_manifests(chart, values_file, rendered_file, namespace):
    values = deep_merge(
        yaml.safe_load((chart / "values.yaml").read_text()),
        yaml.safe_load(Path(values_file).read_text()) or {},
    )
    resources = [document for document in yaml.safe_load_all(Path(rendered_file).read_text()) if document]
    domain = values["clusterDomain"]

    def name(resource):
        return f"{resource['kind']}/{resource['metadata']['name']}"

    def check_all(wrong, what):
        check(not wrong, what + (f"; not: {', '.join(wrong)}" if wrong else ""))

    check_all(
        [
            name(resource)
            for resource in resources
            if resource["metadata"].get("namespace") != namespace
            or resource["metadata"].get("labels", {}).get("app.kubernetes.io/managed-by") != "Helm"
            or resource["metadata"].get("labels", {}).get("app.kubernetes.io/instance") != "quiver"
            or any(
                resource["metadata"].get("labels", {}).get(key) != value
                for key, value in values["commonLabels"].items()
            )
        ],
        f"all {len(resources)} resources: in namespace {namespace}, with the common labels",
    )

    workloads = [resource for resource in resources if resource["kind"] in ("StatefulSet", "Deployment")]
    check_all(
        [
            name(workload)
            for workload in workloads
            if not selects(workload["spec"]["selector"]["matchLabels"], workload["spec"]["template"]["metadata"]["labels"])
        ],
        f"all {len(workloads)} workloads: their selectors match their pods",
    )

    # Services and PodDisruptionBudgets select pods of exactly one workload, and a Service's
    # named target ports exist in those pods.
    selecting = [resource for resource in resources if resource["kind"] in ("Service", "PodDisruptionBudget")]
    wrong_selection, wrong_ports = [], []
    for resource in selecting:
        if resource["kind"] == "Service":
            selector = resource["spec"]["selector"]
        else:
            selector = resource["spec"]["selector"]["matchLabels"]
        selected = [w for w in workloads if selects(selector, w["spec"]["template"]["metadata"]["labels"])]
        if len(selected) != 1:
            wrong_selection.append(name(resource))
        elif resource["kind"] == "Service":
            container_ports = {
                port["name"]
                for container in selected[0]["spec"]["template"]["spec"]["containers"]
                for port in container.get("ports", [])
            }
            if not all(port["targetPort"] in container_ports for port in resource["spec"]["ports"]):
                wrong_ports.append(name(resource))
    check_all(
        wrong_selection,
        f"all {len(selecting)} Services and PodDisruptionBudgets: each selects the pods of one workload",
    )
    check_all(wrong_ports, "every Service's target ports are named ports of the pods it selects")

    services = {resource["metadata"]["name"]: resource for resource in resources if resource["kind"] == "Service"}

    # etcd: the endpoints every Quiver container gets.
    etcd = one(resources, "StatefulSet", "etcd")
    if values["etcd"]["enabled"]:
        check(etcd is not None, "etcd: the chart's own StatefulSet is rendered")
        members = etcd["spec"]["replicas"]
        check(members == values["etcd"]["replicaCount"], f"etcd: {members} member(s), as etcd.replicaCount")
        headless = services.get(etcd["spec"]["serviceName"])
        check(
            headless is not None
            and headless["spec"].get("clusterIP") == "None"
            and headless["spec"].get("publishNotReadyAddresses") is True,
            "etcd: its serviceName is a headless Service that publishes not-ready members",
        )
        host = lambda ordinal: f"{etcd['metadata']['name']}-{ordinal}.{etcd['spec']['serviceName']}.{namespace}.svc.{domain}"
        expected_endpoints = ",".join(
            f"http://{host(ordinal)}:{values['etcd']['clientPort']}" for ordinal in range(members)
        )
        args = etcd["spec"]["template"]["spec"]["containers"][0]["args"]
        flags = dict(arg[2:].split("=", 1) for arg in args if arg.startswith("--") and "=" in arg)
        expected_cluster = ",".join(
            f"{etcd['metadata']['name']}-{ordinal}=http://{host(ordinal)}:{values['etcd']['peerPort']}"
            for ordinal in range(members)
        )
        check(flags.get("initial-cluster") == expected_cluster, f"etcd: --initial-cluster names all {members} member(s)")
        check(
            flags.get("initial-advertise-peer-urls")
            == f"http://$(POD_NAME).{etcd['spec']['serviceName']}.{namespace}.svc.{domain}:{values['etcd']['peerPort']}"
            and flags.get("name") == "$(POD_NAME)",
            "etcd: each member's name and peer URL match its entry in --initial-cluster",
        )
        check(
            flags.get("max-txn-ops") == str(values["etcd"]["maxTxnOps"]),
            f"etcd: --max-txn-ops={values['etcd']['maxTxnOps']}",
        )
        check(etcd["spec"]["podManagementPolicy"] == "Parallel", "etcd: members start together (Parallel)")
        etcd_pdb = one(resources, "PodDisruptionBudget", "etcd")
        wanted_pdb = values["etcd"]["podDisruptionBudget"]["enabled"] and members > 1
        check((etcd_pdb is not None) == wanted_pdb, f"etcd: PodDisruptionBudget {'present' if wanted_pdb else 'absent'}")
    else:
        check(etcd is None, "etcd: no StatefulSet of the chart's own (external etcd)")
        expected_endpoints = ",".join(values["externalEtcd"]["endpoints"])

    quiver_containers = []
    for component in ("searcher", "merger"):
        workload = one(resources, "StatefulSet" if component == "searcher" else "Deployment", component)
        check(workload is not None, f"{component}: workload rendered")
        if workload is not None:
            pod = workload["spec"]["template"]["spec"]
            quiver_containers += [
                (f"{component}/{container['name']}", container)
                for container in pod["containers"] + pod.get("initContainers", [])
            ]
    check_all(
        [
            label
            for label, container in quiver_containers
            if container.get("securityContext", {}) != values["securityContext"]
        ],
        f"all {len(quiver_containers)} Searcher and Merger containers: securityContext as set",
    )
    check_all(
        [
            label
            for label, container in quiver_containers
            if env_of(container).get("QUIVER_ETCD_ENDPOINTS") != expected_endpoints
        ],
        f"all {len(quiver_containers)} Searcher and Merger containers: QUIVER_ETCD_ENDPOINTS={expected_endpoints}",
    )

    # Searchers: stable ids and addresses from the StatefulSet and its headless Service.
    searchers = one(resources, "StatefulSet", "searcher")
    if searchers is not None:
        settings = values["searcher"]
        pod = searchers["spec"]["template"]["spec"]
        container = next(c for c in pod["containers"] if c["name"] == "searcher")
        env = env_of(container)
        port = settings["port"]
        check(searchers["spec"]["replicas"] == settings["replicaCount"], f"searcher: {settings['replicaCount']} replicas")
        headless = services.get(searchers["spec"]["serviceName"])
        check(
            headless is not None
            and headless["spec"].get("clusterIP") == "None"
            and headless["spec"].get("publishNotReadyAddresses") is True,
            "searcher: its serviceName is a headless Service that publishes not-ready pods",
        )
        names = env_names(container)
        check(
            "POD_NAME" in names and names.index("POD_NAME") < names.index("QUIVER_SEARCHER_ID"),
            "searcher: POD_NAME is defined before the variables that use it",
        )
        check(env.get("QUIVER_SEARCHER_ID") == "$(POD_NAME)", "searcher: --id is the pod name")
        check(
            env.get("QUIVER_ADVERTISE_ADDRESS")
            == f"http://$(POD_NAME).{searchers['spec']['serviceName']}.{namespace}.svc.{domain}:{port}",
            "searcher: --advertise-address is the pod's name in the headless Service",
        )
        check(env.get("QUIVER_LISTEN") == f"0.0.0.0:{port}", f"searcher: listens on 0.0.0.0:{port}")
        check(
            [p["containerPort"] for p in container["ports"] if p["name"] == "grpc"] == [port],
            f"searcher: container port grpc is {port}",
        )
        claims = {claim["metadata"]["name"] for claim in searchers["spec"]["volumeClaimTemplates"]}
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        check(
            mounts.get(env.get("QUIVER_DATA_DIR")) in claims,
            f"searcher: --data-dir {env.get('QUIVER_DATA_DIR')} is on its PersistentVolumeClaim",
        )
        check(
            pod["terminationGracePeriodSeconds"] * 1000 > int(env["QUIVER_DRAIN_GRACE_MS"]),
            "searcher: terminationGracePeriodSeconds is longer than the drain grace",
        )
        check_grpc_probe(container, "readinessProbe", settings["readinessProbe"], port, "searcher")
        check_grpc_probe(container, "livenessProbe", settings["livenessProbe"], port, "searcher")
        pdb = one(resources, "PodDisruptionBudget", "searcher")
        check(
            (pdb is not None) == settings["podDisruptionBudget"]["enabled"],
            f"searcher: PodDisruptionBudget {'present' if settings['podDisruptionBudget']['enabled'] else 'absent'}",
        )

    # Mergers: Service, autoscaler, probes.
    mergers = one(resources, "Deployment", "merger")
    if mergers is not None:
        settings = values["merger"]
        pod = mergers["spec"]["template"]["spec"]
        container = next(c for c in pod["containers"] if c["name"] == "merger")
        env = env_of(container)
        port = settings["port"]
        check(env.get("QUIVER_LISTEN") == f"0.0.0.0:{port}", f"merger: listens on 0.0.0.0:{port}")
        check(env.get("QUIVER_WRITE_QUORUM") == str(settings["writeQuorum"]), f"merger: --write-quorum {settings['writeQuorum']}")
        check(
            env.get("QUIVER_REBALANCE_DELAY_MS") == str(settings["rebalanceDelayMs"]),
            f"merger: --rebalance-delay-ms {settings['rebalanceDelayMs']}",
        )
        service = one(resources, "Service", "merger")
        check(
            service is not None and service["spec"]["type"] == settings["service"]["type"]
            and service["spec"]["ports"][0]["port"] == settings["service"]["port"],
            f"merger: Service of type {settings['service']['type']} on port {settings['service']['port']}",
        )
        hpa = one(resources, "HorizontalPodAutoscaler", "merger")
        if settings["autoscaling"]["enabled"]:
            check(
                hpa is not None
                and hpa["spec"]["scaleTargetRef"]["name"] == mergers["metadata"]["name"]
                and hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment",
                "merger: the HorizontalPodAutoscaler scales the Merger Deployment",
            )
            check("replicas" not in mergers["spec"], "merger: the Deployment leaves replicas to the autoscaler")
        else:
            check(hpa is None, "merger: no HorizontalPodAutoscaler")
            check(mergers["spec"].get("replicas") == settings["replicaCount"], f"merger: {settings['replicaCount']} replicas")
        pre_stop = container.get("lifecycle", {}).get("preStop")
        if settings["preStopSleepSeconds"] > 0:
            check(
                pre_stop == {"exec": {"command": ["sleep", str(settings["preStopSleepSeconds"])]}}
                and pod["terminationGracePeriodSeconds"] > settings["preStopSleepSeconds"],
                "merger: preStop sleep shorter than the termination grace period",
            )
        else:
            check(pre_stop is None, "merger: no preStop sleep")
        check_grpc_probe(container, "readinessProbe", settings["readinessProbe"], port, "merger")
        check_grpc_probe(container, "livenessProbe", settings["livenessProbe"], port, "merger")


def described_values(values_path):
    """Dotted paths of values.yaml's keys with a `# --` description, and those without one
    that are not sections (a mapping whose keys are described in turn)."""
    described, undescribed, stack, description = set(), [], [], None
    lines = values_path.read_text().splitlines()
    for number, line in enumerate(lines):
        if re.match(r"^\s*# -- ", line):
            description = True
            continue
        if re.match(r"^\s*#", line):
            continue
        key = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9]*):(.*)$", line)
        if key:
            depth = len(key.group(1)) // 2
            stack = stack[:depth] + [key.group(2)]
            path = ".".join(stack)
            if any(path.startswith(parent + ".") for parent in described):
                description = None
                continue  # a key inside a described value's default
            section = key.group(3).strip() == "" and number + 1 < len(lines) and re.match(
                rf"^{key.group(1)}  \S", lines[number + 1]
            )
            if description:
                described.add(path)
            elif not section:
                undescribed.append(path)
        description = None
    return described, undescribed


def check_documentation(chart):
    described, undescribed = described_values(chart / "values.yaml")
    check(not undescribed, f"values.yaml: every value has a `# --` description ({len(described)} values)")
    for path in undescribed:
        print(f"       no description: {path}", file=sys.stderr)
    readme = (chart / "README.md").read_text()
    rows = set(re.findall(r"^\| `([A-Za-z0-9.]+)` \|", readme, re.MULTILINE))
    missing = sorted(described - rows)
    check(not missing, f"README.md: every value has a row in the values table ({len(rows)} rows)")
    for path in missing:
        print(f"       not in the README: {path}", file=sys.stderr)
    unknown = sorted(rows - described)
    check(not unknown, "README.md: the values table names no value that values.yaml lacks")
    for path in unknown:
        print(f"       not in values.yaml: {path}", file=sys.stderr)


def main(arguments):
    if len(arguments) == 6 and arguments[1] == "manifests":
        check_manifests(Path(arguments[2]), arguments[3], arguments[4], arguments[5])
    elif len(arguments) == 3 and arguments[1] == "documentation":
        check_documentation(Path(arguments[2]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
