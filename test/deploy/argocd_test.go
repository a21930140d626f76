package deploy_test

import (
	"encoding/json"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	lua "github.com/yuin/gopher-lua"
)

// argoHealth runs the chart's Argo CD health check on a SegmentSource (as JSON) the way Argo CD
// does: the object is the global `obj`, and the script returns a table with status and message.
func argoHealth(object string) (status, message string) {
	GinkgoHelper()
	var decoded any
	Expect(json.Unmarshal([]byte(object), &decoded)).To(Succeed())

	L := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer L.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{{lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable}, {lua.StringLibName, lua.OpenString}, {lua.MathLibName, lua.OpenMath}} {
		L.Push(L.NewFunction(lib.open))
		L.Push(lua.LString(lib.name))
		L.Call(1, 0)
	}
	L.SetGlobal("obj", toLua(L, decoded))
	Expect(L.DoString(readFile("charts/tally/files/argocd/health.lua"))).To(Succeed())
	result, ok := L.Get(-1).(*lua.LTable)
	Expect(ok).To(BeTrue(), "the health check returns a table")
	return result.RawGetString("status").String(), result.RawGetString("message").String()
}

// toLua converts decoded JSON into Lua values as Argo CD does (objects and arrays become tables).
func toLua(state *lua.LState, v any) lua.LValue {
	switch v := v.(type) {
	case map[string]any:
		t := state.NewTable()
		for k, e := range v {
			t.RawSetString(k, toLua(state, e))
		}
		return t
	case []any:
		t := state.NewTable()
		for _, e := range v {
			t.Append(toLua(state, e))
		}
		return t
	case string:
		return lua.LString(v)
	case float64:
		return lua.LNumber(v)
	case bool:
		return lua.LBool(v)
	default:
		return lua.LNil
	}
}

// segmentSource is a SegmentSource at generation 2 with the given status (JSON).
func segmentSource(status string) string {
	object := `{"apiVersion": "tally.dev/v1alpha1", "kind": "SegmentSource",
		"metadata": {"name": "acme-web", "namespace": "tenants", "generation": 2},
		"spec": {"tenant": "acme", "writeKeySecretRef": {"name": "acme-segment"}}`
	if status != "" {
		object += `, "status": ` + status
	}
	return object + "}"
}

var _ = Describe("Argo CD health check for SegmentSource (charts/tally/files/argocd/health.lua)", func() {
	DescribeTable("maps the status to an Argo CD health",
		func(status, wantStatus, wantMessage string) {
			gotStatus, gotMessage := argoHealth(segmentSource(status))
			Expect(gotStatus).To(Equal(wantStatus))
			Expect(gotMessage).To(ContainSubstring(wantMessage))
		},
		Entry("no status yet: Progressing", "", "Progressing", "Waiting for the operator"),
		Entry("status defaulted by the CRD, never reconciled: Progressing",
			`{"observedGeneration": -1}`, "Progressing", "Waiting for the operator"),
		Entry("Ready=True for the current generation: Healthy",
			`{"observedGeneration": 2, "conditions": [
				{"type": "Ready", "status": "True", "reason": "Succeeded", "message": "Receiving at http://acme-web-receiver.tenants.svc:8080", "observedGeneration": 2},
				{"type": "Receiving", "status": "True", "reason": "MessagesArrived", "observedGeneration": 2}]}`,
			"Healthy", "Receiving at"),
		Entry("Ready=True but for an older generation: Progressing",
			`{"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded", "observedGeneration": 1}]}`,
			"Progressing", "observe generation 2"),
		Entry("Stalled=True: Degraded, with the operator's message",
			`{"observedGeneration": 2, "conditions": [
				{"type": "Ready", "status": "False", "reason": "SecretNotFound", "message": "Secret tenants/acme-segment not found", "observedGeneration": 2},
				{"type": "Stalled", "status": "True", "reason": "SecretNotFound", "message": "Secret tenants/acme-segment not found", "observedGeneration": 2}]}`,
			"Degraded", "Secret tenants/acme-segment not found"),
		Entry("Reconciling=True and Ready=False: Progressing, with the operator's message",
			`{"observedGeneration": 2, "conditions": [
				{"type": "Ready", "status": "False", "reason": "Progressing", "message": "Waiting for the receiver Deployment", "observedGeneration": 2},
				{"type": "Reconciling", "status": "True", "reason": "Progressing", "observedGeneration": 2}]}`,
			"Progressing", "Waiting for the receiver Deployment"),
		Entry("Ready=Unknown: Progressing",
			`{"observedGeneration": 2, "conditions": [{"type": "Ready", "status": "Unknown", "reason": "Reconciling", "observedGeneration": 2}]}`,
			"Progressing", "Reconciling"),
		Entry("Stalled=False and Ready=True: Healthy",
			`{"observedGeneration": 2, "conditions": [
				{"type": "Stalled", "status": "False", "reason": "Recovered", "observedGeneration": 2},
				{"type": "Ready", "status": "True", "reason": "Succeeded", "observedGeneration": 2}]}`,
			"Healthy", "Succeeded"),
	)

	It("is published verbatim in the chart README", func() {
		script := strings.TrimSpace(readFile("charts/tally/files/argocd/health.lua"))
		readme := readFile("charts/tally/README.md")
		Expect(readme).To(ContainSubstring(indent(script, "    ")), "charts/tally/README.md must carry files/argocd/health.lua, indented under health.lua: |")
	})
})

// indent prefixes every non-empty line of s with prefix.
func indent(s, prefix string) string {
	lines := strings.Split(s, "\n")
	for i, line := range lines {
		if line != "" {
			lines[i] = prefix + line
		}
	}
	return strings.Join(lines, "\n")
}
