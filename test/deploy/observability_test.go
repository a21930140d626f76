package deploy_test

import (
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"sigs.k8s.io/yaml"
)

var _ = Describe("Helm chart observability", func() {
	enabled := []string{"--set", "grafana.dashboards.enabled=true", "--set", "prometheusRule.enabled=true",
		"--set", "metrics.podMonitor.enabled=true", "--set", "grafana.dashboards.annotations.grafana_folder=Operators"}

	It("ships the dashboard for Grafana's sidecar, the alerts as a PrometheusRule and a PodMonitor for the workloads", func() {
		rendered := parseObjects(mustHelmTemplate(defaultNamespace, append(enabled,
			"--api-versions", "monitoring.coreos.com/v1/PrometheusRule", "--api-versions", "monitoring.coreos.com/v1/PodMonitor")...))

		dashboard := find(rendered, "ConfigMap", "tally-dashboard")
		Expect(dashboard.GetLabels()).To(HaveKeyWithValue("grafana_dashboard", "1"))
		Expect(dashboard.GetAnnotations()).To(HaveKeyWithValue("grafana_folder", "Operators"))
		data := dashboard.Object["data"].(map[string]any)
		Expect(data["tally.json"]).To(MatchJSON(readFile("charts/tally/files/grafana/tally-dashboard.json")))

		rule := find(rendered, "PrometheusRule", "tally")
		var alerts map[string]any
		Expect(yaml.Unmarshal([]byte(readFile("charts/tally/files/prometheus/alerts.yaml")), &alerts)).To(Succeed())
		Expect(rule.Object["spec"]).To(Equal(alerts), "the rules as tested by promtool, verbatim ({{ $labels }} untouched by Helm)")

		pm := find(rendered, "PodMonitor", "tally-workloads")
		spec := pm.Object["spec"].(map[string]any)
		Expect(spec["selector"]).To(Equal(map[string]any{"matchLabels": map[string]any{
			"app.kubernetes.io/part-of": "tally", "app.kubernetes.io/managed-by": "tally-operator"}}))
		Expect(spec["namespaceSelector"]).To(Equal(map[string]any{"any": true}))
		Expect(spec["podMetricsEndpoints"]).To(ConsistOf(
			HaveKeyWithValue("port", "http"), HaveKeyWithValue("port", "metrics")))
	})

	It("renders no PrometheusRule or PodMonitor where the Prometheus Operator's APIs are missing, even if asked", func() {
		kinds := kindsOf(parseObjects(mustHelmTemplate(defaultNamespace, enabled...)))
		Expect(kinds).To(ContainElement("ConfigMap/tally-dashboard"))
		Expect(kinds).NotTo(ContainElement(HavePrefix("PrometheusRule/")))
		Expect(kinds).NotTo(ContainElement(HavePrefix("PodMonitor/")))
	})
})
