// Package observability checks what the chart ships for operators of Tally: the Grafana dashboard
// and the Prometheus alerts read metrics that exist, and the alerts fire as their runbooks say
// (promtool's rule unit tests, from the Prometheus module).
package observability

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/yaml"

	"github.com/tallyhq/tally/controllers"
	"github.com/tallyhq/tally/workers/insights"
	"github.com/tallyhq/tally/workers/receiver"
	"github.com/tallyhq/tally/workers/worker"
)

func TestObservability(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "Observability Suite")
}

// promtool is the Prometheus module's own rule test runner, built from the Go module proxy (the
// build cache keeps it); PROMTOOL=/path/to/promtool overrides.
const promtoolModule = "github.com/prometheus/prometheus/cmd/promtool@v0.316.0"

var (
	repoRoot    = filepath.Join("..", "..")
	chartFiles  = filepath.Join(repoRoot, "charts", "tally", "files")
	metricName  = regexp.MustCompile(`\btally_[a-z0-9_]+`)
	descFQName  = regexp.MustCompile(`fqName: "([^"]+)"`)
	seriesExtra = regexp.MustCompile(`_(bucket|sum|count)$`)
)

// registered lists every metric Tally's processes register: receiver, worker, insights pusher
// and operator.
func registered() map[string]bool {
	reg := prometheus.NewRegistry()
	receiver.NewMetrics(reg)
	worker.NewMetrics(reg)
	insights.NewMetrics(reg)
	controllers.NewMetrics(reg)
	families := map[string]bool{}
	descs := make(chan *prometheus.Desc, 256)
	go func() {
		reg.Describe(descs)
		close(descs)
	}()
	for d := range descs {
		m := descFQName.FindStringSubmatch(d.String())
		Expect(m).To(HaveLen(2), d.String())
		families[m[1]] = true
	}
	return families
}

// exists says whether a name read in a query is a registered metric or one of a histogram's
// series.
func exists(families map[string]bool, name string) bool {
	return families[name] || families[seriesExtra.ReplaceAllString(name, "")]
}

var _ = Describe("The Grafana dashboard", func() {
	var dashboard map[string]any
	BeforeEach(func() {
		data, err := os.ReadFile(filepath.Join(chartFiles, "grafana", "tally-dashboard.json"))
		Expect(err).NotTo(HaveOccurred())
		Expect(json.Unmarshal(data, &dashboard)).To(Succeed())
	})

	It("queries only metrics Tally registers", func() {
		families := registered()
		data, err := json.Marshal(dashboard)
		Expect(err).NotTo(HaveOccurred())
		used := metricName.FindAllString(string(data), -1)
		Expect(len(used)).To(BeNumerically(">", 20))
		for _, name := range used {
			Expect(exists(families, name)).To(BeTrue(), "the dashboard reads %s, which no Tally process registers", name)
		}
	})

	It("has the panels the README lists, each with a query and a description", func() {
		var titles []string
		for _, p := range dashboard["panels"].([]any) {
			panel := p.(map[string]any)
			if panel["type"] == "row" {
				continue
			}
			titles = append(titles, panel["title"].(string))
			Expect(panel["description"]).NotTo(BeEmpty(), panel["title"])
			Expect(panel["targets"]).NotTo(BeEmpty(), panel["title"])
		}
		readme, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
		Expect(err).NotTo(HaveOccurred())
		text := strings.Join(strings.Fields(string(readme)), " ") // lines wrap anywhere
		for _, t := range titles {
			Expect(text).To(ContainSubstring(t), "README's Observability section lists every panel")
		}
	})
})

var _ = Describe("The Prometheus alerts", func() {
	var groups struct {
		Groups []struct {
			Rules []struct {
				Alert       string
				Expr        string
				Annotations map[string]string
			}
		}
	}
	BeforeEach(func() {
		data, err := os.ReadFile(filepath.Join(chartFiles, "prometheus", "alerts.yaml"))
		Expect(err).NotTo(HaveOccurred())
		Expect(yaml.Unmarshal(data, &groups)).To(Succeed())
		Expect(groups.Groups).NotTo(BeEmpty())
	})

	It("read only metrics Tally registers, and each has a runbook section in the chart README", func() {
		families := registered()
		readme, err := os.ReadFile(filepath.Join(repoRoot, "charts", "tally", "README.md"))
		Expect(err).NotTo(HaveOccurred())
		n := 0
		for _, g := range groups.Groups {
			for _, r := range g.Rules {
				n++
				for _, name := range metricName.FindAllString(r.Expr, -1) {
					Expect(exists(families, name)).To(BeTrue(), "%s reads %s, which no Tally process registers", r.Alert, name)
				}
				Expect(string(readme)).To(ContainSubstring("### "+r.Alert), "runbook of %s", r.Alert)
				Expect(r.Annotations["runbook_url"]).To(HaveSuffix("#" + strings.ToLower(r.Alert)))
			}
		}
		Expect(n).To(Equal(8))
	})

	It("fire as their unit tests say (promtool test rules)", func() {
		cmd := exec.Command("go", "run", promtoolModule, "test", "rules", "alerts_test.yaml")
		if p := os.Getenv("PROMTOOL"); p != "" {
			cmd = exec.Command(p, "test", "rules", "alerts_test.yaml")
		}
		cmd.Dir = filepath.Join(chartFiles, "prometheus")
		out, err := cmd.CombinedOutput()
		Expect(err).NotTo(HaveOccurred(), string(out))
		Expect(string(out)).To(ContainSubstring("SUCCESS"))
	})
})
