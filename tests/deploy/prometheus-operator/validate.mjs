// Validates prometheus-operator custom resources against the CRDs' OpenAPI schemas (as compiled validators of
// @kubernetes-models/prometheus-operator). Reads a JSON array of manifests on stdin; prints a JSON array with one
// list of problems per manifest (empty: valid). Used by tests/deploy/test_deploy_monitoring.py.
import { PrometheusRule, ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const KINDS = { PrometheusRule, ServiceMonitor };

let input = "";
for await (const chunk of process.stdin) input += chunk;
const results = JSON.parse(input).map((manifest) => {
  const Model = KINDS[manifest.kind];
  if (manifest.apiVersion !== "monitoring.coreos.com/v1" || Model === undefined) {
    return [`no prometheus-operator schema for ${manifest.apiVersion} ${manifest.kind}`];
  }
  try {
    new Model(manifest).validate();
    return [];
  } catch (error) {
    return [String(error.message ?? error)];
  }
});
process.stdout.write(JSON.stringify(results));
