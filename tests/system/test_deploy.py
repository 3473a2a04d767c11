"""Checks over deploy/: promtool on the Prometheus config and alert rules (and the rules' unit tests),
every ``dptstream_*`` name in the rules and the Grafana dashboard against the metrics the pipeline
exports, and the compose file, Grafana provisioning, Kubernetes manifests and Dockerfiles hold what
they should. Needs ``promtool`` on PATH (Debian package ``prometheus``)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.metrics import METRIC_NAMES, Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
K8S = DEPLOY / "k8s"
PREFIX = "dptstream_"
METRIC_RE = re.compile(r"\bdptstream_[A-Za-z0-9_:]+")
PORT = 9108
VIEW_PORT = 8088


# ---------------------------------------------------------------- helpers


def exported_series() -> set[str]:
    """Series names a scrape of the pipeline can show, from ``METRIC_NAMES`` and each metric's type."""
    kinds = {fam.name: fam.type for fam in Metrics().registry.collect()}
    series: set[str] = set()
    for name in METRIC_NAMES:
        full = PREFIX + name
        base = full.removesuffix("_total").removesuffix("_info")  # counters and infos register without it
        kind = kinds.get(full) or kinds.get(base)
        if kind == "histogram":
            series |= {full + "_bucket", full + "_sum", full + "_count"}
        elif (kind == "gauge" or (kind == "counter" and name.endswith("_total"))
              or (kind == "info" and name.endswith("_info"))):
            series.add(full)
        else:
            pytest.fail(f"METRIC_NAMES lists {name!r} but pipeline.metrics.Metrics defines no such metric "
                        f"(types seen: {sorted(kinds)})")
    return series


def metric_names(text: str) -> set[str]:
    return set(METRIC_RE.findall(text))


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool is not on PATH: install it (Debian: apt-get install prometheus)"
    return subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    doc = load_yaml(PROM / "alerts.yml")
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def dashboard() -> dict[str, Any]:
    return json.loads((GRAFANA / "dashboards" / "dptstream.json").read_text())


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # panels inside collapsed rows
    return out


def k8s_docs() -> dict[str, list[dict[str, Any]]]:
    docs: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        docs[path.name] = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def k8s_objects(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for ds in k8s_docs().values() for d in ds if d["kind"] == kind}


# ---------------------------------------------------------------- the metric contract


def test_metric_names_match_the_metrics_object() -> None:
    """Every metric the Metrics object registers is in METRIC_NAMES, so deploy/ can rely on the list."""
    declared = {PREFIX + n.removesuffix("_total").removesuffix("_info") for n in METRIC_NAMES}
    registered = {fam.name for fam in Metrics().registry.collect()}
    assert registered == declared
    assert len(exported_series()) > len(METRIC_NAMES)


# ---------------------------------------------------------------- Prometheus


def test_promtool_check_rules() -> None:
    r = promtool("check", "rules", "deploy/prometheus/alerts.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_promtool_check_config() -> None:
    # rule_files resolve relative to the config file: this also loads and checks alerts.yml
    r = promtool("check", "config", "deploy/prometheus/prometheus.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 rule files found" in r.stdout


def test_promtool_alert_unit_tests() -> None:
    r = promtool("test", "rules", "deploy/prometheus/alerts_test.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_alert_unit_tests_cover_firing_alerts() -> None:
    doc = load_yaml(PROM / "alerts_test.yml")
    assert doc["rule_files"] == ["alerts.yml"]
    firing = {t["alertname"] for case in doc["tests"] for t in case.get("alert_rule_test", [])
              if t.get("exp_alerts")}
    assert {"DptstreamStreamDown", "DptstreamSinkErrors", "DptstreamZoneRuleActive"} <= firing
    assert firing <= {r["alert"] for r in alert_rules()}


def test_scrape_config() -> None:
    cfg = load_yaml(PROM / "prometheus.yml")
    for rule_file in cfg["rule_files"]:
        assert (PROM / rule_file).is_file(), rule_file
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    targets = {t for sc in jobs["dptstream"]["static_configs"] for t in sc["targets"]}
    assert targets == {f"pipeline:{PORT}", f"worker:{PORT}"}
    assert jobs["dptstream"].get("metrics_path", "/metrics") == "/metrics"


def test_alert_rules_use_only_exported_metrics() -> None:
    allowed = exported_series()
    for rule in alert_rules():
        used = metric_names(rule["expr"])
        assert used <= allowed, f"{rule['alert']}: not exported by the pipeline: {sorted(used - allowed)}"
        mentioned = metric_names(" ".join(rule["annotations"].values()))
        assert mentioned <= allowed, f"{rule['alert']} annotations name {sorted(mentioned - allowed)}"


def test_alert_rules_have_severity_and_annotations() -> None:
    rules = {r["alert"]: r for r in alert_rules()}
    assert len(rules) == len(alert_rules()), "duplicate alert names"
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert rule["annotations"].get("summary"), name
        assert rule["annotations"].get("description"), name
    expected = {
        "DptstreamStreamDown": ("dptstream_stream_up == 0", "2m"),
        "DptstreamDropRateHigh": ("> 0.2", None),
        "DptstreamLatencyP99High": ("histogram_quantile(0.99", None),
        "DptstreamSinkErrors": ("increase(dptstream_sink_errors_total[5m]) > 0", None),
        "DptstreamNoFramesPublished": ('dptstream_frames_total{stage="published"}', None),
        "DptstreamZoneRuleActive": ("dptstream_rule_active", None),
    }
    for name, (fragment, for_) in expected.items():
        assert name in rules, f"missing alert {name}"
        assert fragment in rules[name]["expr"], f"{name}: {rules[name]['expr']!r}"
        if for_:
            assert rules[name]["for"] == for_
    assert 'stage="decoded"' in rules["DptstreamDropRateHigh"]["expr"]
    assert "dptstream_stream_up" in rules["DptstreamNoFramesPublished"]["expr"]


# ---------------------------------------------------------------- Grafana


def test_dashboard_parses_and_queries_prometheus() -> None:
    dash = dashboard()
    assert dash["uid"] == "dptstream"
    assert 36 <= dash["schemaVersion"] <= 41
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels(dash):
        assert p["gridPos"]["x"] >= 0 and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "prometheus", p["title"]
        assert p["targets"], f"panel {p['title']!r} has no query"
        for t in p["targets"]:
            assert t["expr"].strip(), p["title"]
            assert t["datasource"]["uid"] == "prometheus", p["title"]
    for var in dash["templating"]["list"]:
        assert var["datasource"]["uid"] == "prometheus", var["name"]


def test_dashboard_uses_only_exported_metrics() -> None:
    dash = dashboard()
    allowed = exported_series()
    used: set[str] = set()
    for p in panels(dash):
        for t in p.get("targets", []):
            names = metric_names(t["expr"])
            assert names, f"panel {p['title']!r} queries no dptstream metric: {t['expr']!r}"
            assert names <= allowed, f"panel {p['title']!r}: not exported: {sorted(names - allowed)}"
            used |= names
    for var in dash["templating"]["list"]:
        names = metric_names(json.dumps(var["query"]))
        assert names <= allowed, f"variable {var['name']}: not exported: {sorted(names - allowed)}"
    wanted = {
        "dptstream_frames_total", "dptstream_frames_dropped_total", "dptstream_latency_seconds_bucket",
        "dptstream_queue_depth", "dptstream_batch_size_bucket", "dptstream_stream_reconnects_total",
        "dptstream_sink_errors_total", "dptstream_degraded", "dptstream_stream_up",
        "dptstream_rule_active", "dptstream_rule_events_total",
    }
    assert wanted <= used, f"dashboard lacks panels for {sorted(wanted - used)}"
    fps = [t["expr"] for p in panels(dash) for t in p.get("targets", []) if 'stage="published"' in t["expr"]]
    assert any("rate(dptstream_frames_total" in e for e in fps)


def test_grafana_provisioning() -> None:
    ds = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yaml")
    (prom,) = ds["datasources"]
    assert (prom["uid"], prom["type"], prom["url"]) == ("prometheus", "prometheus", "http://prometheus:9090")
    prov = load_yaml(GRAFANA / "provisioning" / "dashboards" / "dptstream.yaml")
    (provider,) = prov["providers"]
    assert provider["type"] == "file"
    compose = load_yaml(DEPLOY / "compose.yaml")
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["grafana"]["volumes"]
              if v.startswith("./")}
    assert mounts[provider["options"]["path"]] == "./grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"


# ---------------------------------------------------------------- compose


def test_compose_services() -> None:
    compose = load_yaml(DEPLOY / "compose.yaml")
    services = compose["services"]
    assert {"pipeline", "worker", "redis", "prometheus", "grafana"} <= set(services)
    pipeline, worker = services["pipeline"], services["worker"]
    assert pipeline["command"][:2] == ["run", "/configs/camera-monitoring.yaml"]
    assert worker["command"][0] == "worker"
    for svc in (pipeline, worker):
        assert "REDIS_URL" in svc["environment"]
        assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        assert any(str(p).endswith(f":{PORT}") for p in svc["ports"])
    assert services["redis"]["image"].startswith("redis:7")
    for volume in services["prometheus"]["volumes"]:
        host, _, _ = volume.partition(":")
        if host.startswith("./"):
            assert (DEPLOY / host).is_file(), volume
    prom_mounts = {v.split(":")[1] for v in services["prometheus"]["volumes"]}
    assert {"/etc/prometheus/prometheus.yml", "/etc/prometheus/alerts.yml"} <= prom_mounts
    for volume in services["grafana"]["volumes"]:
        host, _, _ = volume.partition(":")
        if host.startswith("./"):
            assert (DEPLOY / host).is_dir(), volume


def test_compose_view_service() -> None:
    from pipeline.view import TOKEN_ENV

    services = load_yaml(DEPLOY / "compose.yaml")["services"]
    view = services["view"]
    cmd = view["command"]
    assert cmd[0] == "view" and cmd[cmd.index("--port") + 1] == str(VIEW_PORT)
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"  # the container's network: so a token is required ...
    assert TOKEN_ENV in view["environment"] and "REDIS_URL" in view["environment"]
    assert view["ports"] == [f"127.0.0.1:{VIEW_PORT}:{VIEW_PORT}"]  # ... and the host publishes it on loopback
    assert "deploy" not in view, "the view needs no GPU reservation"
    assert f"http://localhost:{VIEW_PORT}/healthz" in " ".join(view["healthcheck"]["test"])
    assert (DEPLOY / view["build"]["context"] / view["build"]["dockerfile"]).is_file()
    assert view["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_cpu_override() -> None:
    class ComposeLoader(yaml.SafeLoader):
        pass

    def tagged(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node)
        return loader.construct_scalar(node)  # type: ignore[arg-type]

    for tag in ("!reset", "!override"):
        ComposeLoader.add_constructor(tag, tagged)
    override = yaml.load((DEPLOY / "compose.cpu.yaml").read_text(), Loader=ComposeLoader)
    base = load_yaml(DEPLOY / "compose.yaml")
    for name, svc in override["services"].items():
        assert name in base["services"]
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile.cpu"


# ---------------------------------------------------------------- Kubernetes


def test_k8s_manifests_parse() -> None:
    docs = k8s_docs()
    assert docs, "no manifests under deploy/k8s"
    kinds: list[str] = []
    for name, ds in docs.items():
        assert ds, f"{name} is empty"
        for d in ds:
            assert d.get("apiVersion") and d.get("kind"), name
            if d["kind"] != "Kustomization":
                assert d["metadata"]["name"], name
                if d["kind"] != "Namespace":
                    assert d["metadata"]["namespace"] == "dptstream", f"{name}: {d['kind']}"
            kinds.append(d["kind"])
    for kind in ("Namespace", "ConfigMap", "Deployment", "Service", "ScaledObject", "Kustomization"):
        assert kind in kinds, f"no {kind} under deploy/k8s"
    kustomization = next(d for ds in docs.values() for d in ds if d["kind"] == "Kustomization")
    for res in kustomization["resources"]:
        assert (K8S / res).is_file(), res


def _container(deploy: dict[str, Any]) -> dict[str, Any]:
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    return c


def test_k8s_deployments() -> None:
    deployments = k8s_objects("Deployment")
    assert set(deployments) == {"dptstream-pipeline", "dptstream-worker", "dptstream-view", "dptstream-node"}
    deployments.pop("dptstream-view")  # test_k8s_view
    secrets = k8s_objects("Secret")
    for name, d in deployments.items():
        c = _container(d)
        pod = d["spec"]["template"]
        assert d["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items(), name
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1, name
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["metrics"] == PORT, name
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}, name
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}, name
        env = {e["name"]: e for e in c["env"]}
        ref = env["REDIS_URL"]["valueFrom"]["secretKeyRef"]
        assert "value" not in env["REDIS_URL"], f"{name}: REDIS_URL must come from a Secret"
        assert ref["key"] in secrets[ref["name"]]["stringData"], name
        assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true", name
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True, name
    assert _container(deployments["dptstream-worker"])["args"][0] == "worker"
    pipeline_args = _container(deployments["dptstream-pipeline"])["args"]
    assert pipeline_args[0] == "run"
    config_path = Path(pipeline_args[1])
    live = deployments["dptstream-pipeline"]
    mounts = {m["name"]: m["mountPath"] for m in _container(live)["volumeMounts"]}
    volumes = {v["name"]: v for v in live["spec"]["template"]["spec"]["volumes"]}
    (config_volume,) = [n for n, p in mounts.items() if p == str(config_path.parent)]
    configmap = k8s_objects("ConfigMap")[volumes[config_volume]["configMap"]["name"]]
    assert config_path.name in configmap["data"]


def test_k8s_configmap_is_a_valid_pipeline_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.configfile import load_config

    monkeypatch.setenv("REDIS_URL", "redis://redis.test:6379/0")
    for cm in k8s_objects("ConfigMap").values():
        for key, text in cm["data"].items():
            path = tmp_path / key
            path.write_text(text)
            cfg = load_config(path)
            assert cfg.sources or key == "fleet-node.yaml", key  # a fleet node's cameras come from Redis
            assert cfg.metrics.port == PORT, key
            # no sinks: key in the file, so the sink comes from REDIS_URL (the Secret)
            assert cfg.sinks == ["redis://redis.test:6379/0"], key


def test_k8s_fleet_nodes() -> None:
    """Fleet nodes: several replicas with no per-pod configuration, a disruption budget that keeps all but one,
    and a SIGTERM grace longer than a drain (leases go at once; decoded frames drain in seconds)."""
    from pipeline.configfile import load_config

    node = k8s_objects("Deployment")["dptstream-node"]
    args = _container(node)["args"]
    assert args[0] == "node" and node["spec"]["replicas"] >= 2
    assert "env" not in args and not any(a.startswith("--node-id") for a in args)
    assert node["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30
    pdb = k8s_objects("PodDisruptionBudget")["dptstream-node"]
    assert pdb["spec"]["selector"]["matchLabels"] == node["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["maxUnavailable"] == 1
    text = k8s_objects("ConfigMap")["dptstream-config"]["data"][Path(args[1]).name]
    path = K8S.parent.parent / "configs" / "fleet-node.yaml"
    assert load_config(path).fleet.lease_s < node["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert "sources" not in yaml.safe_load(text)
    services = load_yaml(DEPLOY / "compose.yaml")["services"]
    assert services["node"]["command"][0] == "node" and services["node"]["deploy"]["replicas"] == 2


def test_k8s_services_expose_metrics() -> None:
    services = k8s_objects("Service")
    deployments = k8s_objects("Deployment")
    assert services.pop("dptstream-view")  # test_k8s_view
    assert services
    for name, svc in services.items():
        (port,) = svc["spec"]["ports"]
        assert (port["name"], port["port"], port["targetPort"]) == ("metrics", PORT, "metrics"), name
        assert svc["metadata"]["annotations"]["prometheus.io/scrape"] == "true", name
        assert svc["metadata"]["annotations"]["prometheus.io/port"] == str(PORT), name
        selector = svc["spec"]["selector"].items()
        assert any(selector <= d["spec"]["template"]["metadata"]["labels"].items()
                   for d in deployments.values()), f"{name} selects no Deployment"
    (monitor,) = k8s_objects("ServiceMonitor").values()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]


def test_k8s_view() -> None:
    from pipeline.view import TOKEN_ENV

    view = k8s_objects("Deployment")["dptstream-view"]
    pod = view["spec"]["template"]
    c = _container(view)
    assert c["args"][:1] == ["view"] and c["args"][c["args"].index("--host") + 1] == "0.0.0.0"
    assert c["args"][c["args"].index("--port") + 1] == str(VIEW_PORT)
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": VIEW_PORT}
    assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "http"}  # the one path without the token
    env = {e["name"]: e for e in c["env"]}
    secrets = k8s_objects("Secret")
    for var in ("REDIS_URL", TOKEN_ENV):
        assert "value" not in env[var], f"{var} must come from a Secret"
        ref = env[var]["valueFrom"]["secretKeyRef"]
        assert ref["key"] in secrets[ref["name"]]["stringData"], var
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    svc = k8s_objects("Service")["dptstream-view"]
    (port,) = svc["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (VIEW_PORT, "http")
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert view["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()


def test_k8s_keda_scales_workers_on_the_job_stream() -> None:
    (scaled,) = k8s_objects("ScaledObject").values()
    assert scaled["spec"]["scaleTargetRef"]["name"] in k8s_objects("Deployment")
    triggers = scaled["spec"]["triggers"]
    assert triggers and all(t["type"] == "redis-streams" for t in triggers)
    for t in triggers:
        assert t["metadata"]["stream"] == "dpt:jobs"
        assert t["metadata"]["consumerGroup"] == "dptstream-workers"
        assert t["authenticationRef"]["name"] in k8s_objects("TriggerAuthentication")
    assert any("pendingEntriesCount" in t["metadata"] for t in triggers)
    secrets = k8s_objects("Secret")
    for auth in k8s_objects("TriggerAuthentication").values():
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["key"] in secrets[ref["name"]]["stringData"]


# ---------------------------------------------------------------- images


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cpu"])
def test_dockerfiles(name: str) -> None:
    text = (DEPLOY / name).read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert any(ln.startswith("FROM ") for ln in lines)
    (user,) = [ln for ln in lines if ln.startswith("USER ")]
    assert user.split()[1].split(":")[0] not in ("root", "0")
    assert lines.index(user) > max(i for i, ln in enumerate(lines) if ln.startswith("RUN "))
    assert f"http://localhost:{PORT}/healthz" in text
    assert 'ENTRYPOINT ["dptstream"]' in lines
    assert f"EXPOSE {PORT}" in lines
    assert f"EXPOSE {VIEW_PORT}" in lines
    if name == "Dockerfile":
        assert "nvcr.io/nvidia/tensorrt:" in text
        assert 'pip install ".[tensorrt]"' in text
    else:
        assert "FROM python:3.11-slim" in lines
        assert "TORCH_VERSION=2.13.0" in text
        torch_line = next(i for i, ln in enumerate(lines) if "https://download.pytorch.org/whl/cpu" in ln)
        project_line = next(i for i, ln in enumerate(lines) if "pip install ." in ln)
        assert torch_line < project_line, "install the CPU torch wheel before the project"
    ignore = (DEPLOY / f"{name}.dockerignore").read_text().split()
    for needed in ("!pyproject.toml", "!README.md", "!pipeline/", "!engines/", "!configs/"):
        assert needed in ignore, f"{name}.dockerignore leaves out {needed[1:]}"
