// Offline checks of deploy/ (run by tests/deploy_test.sh):
// 1. every Kubernetes object in deploy/k8s validates against its schema (kubernetes-models);
// 2. house rules the schemas do not express: resource requests and limits on every container,
//    gRPC readiness and liveness probes on every long-running gRPC daemon, scrape annotations;
// 3. every metric the Grafana dashboard and the alert rules use is one Tessera documents
//    (docs/operations.md), so a renamed metric cannot leave a silent panel or a dead alert.
// Prints what is wrong and exits 1, or prints a summary and exits 0.
import fs from "node:fs";
import path from "node:path";
import yaml from "js-yaml";
import { ConfigMap, PersistentVolumeClaim, Service } from "kubernetes-models/v1";
import { StatefulSet, Deployment } from "kubernetes-models/apps/v1";
import { Job } from "kubernetes-models/batch/v1";
import { HorizontalPodAutoscaler } from "kubernetes-models/autoscaling/v2";

const root = process.argv[2] ?? path.resolve(path.dirname(new URL(import.meta.url).pathname), "../..");
const models = {
  "v1/ConfigMap": ConfigMap,
  "v1/PersistentVolumeClaim": PersistentVolumeClaim,
  "v1/Service": Service,
  "apps/v1/StatefulSet": StatefulSet,
  "apps/v1/Deployment": Deployment,
  "batch/v1/Job": Job,
  "autoscaling/v2/HorizontalPodAutoscaler": HorizontalPodAutoscaler,
};
const problems = [];
let objects = 0;

const k8sDir = path.join(root, "deploy/k8s");
for (const file of fs.readdirSync(k8sDir).filter((f) => f.endsWith(".yaml")).sort()) {
  const docs = yaml.loadAll(fs.readFileSync(path.join(k8sDir, file), "utf8")).filter(Boolean);
  for (const doc of docs) {
    const where = `${file}: ${doc.kind}/${doc.metadata?.name}`;
    const Model = models[`${doc.apiVersion}/${doc.kind}`];
    if (!Model) {
      problems.push(`${where}: no schema known for ${doc.apiVersion} ${doc.kind}`);
      continue;
    }
    try {
      new Model(doc).validate();
    } catch (e) {
      problems.push(`${where}: ${e.message}`);
      continue;
    }
    ++objects;
    const pod = doc.spec?.template?.spec;
    if (!pod) continue;
    const component = doc.spec.template.metadata?.labels?.["app.kubernetes.io/component"];
    const annotations = doc.spec.template.metadata?.annotations ?? {};
    if (annotations["prometheus.io/scrape"] !== "true" || !annotations["prometheus.io/port"]) {
      problems.push(`${where}: pods need prometheus.io/scrape and prometheus.io/port annotations`);
    }
    for (const c of pod.containers) {
      const r = c.resources ?? {};
      for (const k of ["requests", "limits"]) {
        if (!r[k]?.cpu || !r[k]?.memory) problems.push(`${where}: container ${c.name} needs ${k} for cpu and memory`);
      }
      if (component === "server" || component === "coordinator" || component === "serving") {
        for (const probe of ["readinessProbe", "livenessProbe"]) {
          // A gRPC probe, or (under TLS, which kubelet's gRPC probes cannot speak) `tessera
          // health` with the daemon's own TLS files.
          const p = c[probe];
          const cmd = p?.exec?.command ?? [];
          const tlsArgs = (c.args ?? []).filter((a) => /^--tls_(cert|key|ca)_file=/.test(a));
          const execOk = cmd.length >= 3 && cmd[0].endsWith("/tessera") && cmd[1] === "health" &&
            cmd.some((a) => /^--address=127\.0\.0\.1:\d+$/.test(a)) && tlsArgs.every((a) => cmd.includes(a));
          if (!p?.grpc?.port && !execOk) {
            problems.push(`${where}: container ${c.name} needs a gRPC ${probe} (or tessera health with its TLS files)`);
          }
        }
      }
    }
  }
}

// Metrics used by the dashboard and the alerts, against the documented ones.
const documented = new Set(
  [...fs.readFileSync(path.join(root, "docs/operations.md"), "utf8").matchAll(/`((?:tessera|process)_[a-z_]+)`/g)].map((m) => m[1]),
);
// A `..._last_bytes`-style abbreviation in the docs ("`..._last_rows`") is not matched above;
// the standard suffixes of histograms are implied by their base name.
const known = (name) => documented.has(name) || documented.has(name.replace(/_(bucket|sum|count)$/, ""));
const used = new Map();  // metric -> where
const dashboard = JSON.parse(fs.readFileSync(path.join(root, "deploy/grafana/tessera.json"), "utf8"));
let panels = 0;
for (const p of dashboard.panels) {
  if (p.type === "row") continue;
  ++panels;
  if (!p.targets?.length) problems.push(`dashboard panel "${p.title}" has no query`);
  for (const t of p.targets ?? []) {
    for (const m of t.expr.matchAll(/\b((?:tessera|process)_[a-z_]+)/g)) used.set(m[1], `dashboard panel "${p.title}"`);
  }
}
const rules = yaml.load(fs.readFileSync(path.join(root, "deploy/prometheus/alerts.yml"), "utf8"));
let alerts = 0;
for (const g of rules.groups) {
  for (const r of g.rules) {
    ++alerts;
    for (const m of r.expr.matchAll(/\b((?:tessera|process)_[a-z_]+)/g)) used.set(m[1], `alert ${r.alert}`);
    if (!r.annotations?.description?.includes("Runbook: docs/operations.md#")) {
      problems.push(`alert ${r.alert} needs a runbook link (docs/operations.md#...)`);
    }
  }
}
for (const [name, where] of used) {
  if (!known(name)) problems.push(`${where} uses ${name}, which docs/operations.md does not document`);
}
// Every runbook anchor an alert links to exists.
const ops = fs.readFileSync(path.join(root, "docs/operations.md"), "utf8");
const anchors = new Set([...ops.matchAll(/^#+ (.+)$/gm)].map((m) => m[1].toLowerCase().replace(/[^a-z0-9 -]/g, "").replace(/ /g, "-")));
for (const g of rules.groups) {
  for (const r of g.rules) {
    const a = r.annotations?.description?.match(/docs\/operations\.md#([a-z0-9-]+)/)?.[1];
    if (a && !anchors.has(a)) problems.push(`alert ${r.alert} links to #${a}, which docs/operations.md does not have`);
  }
}

if (problems.length) {
  for (const p of problems) console.log(`FAIL: ${p}`);
  process.exit(1);
}
console.log(`ok: ${objects} Kubernetes objects valid; ${panels} dashboard panels and ${alerts} alerts use ${used.size} documented metrics`);
