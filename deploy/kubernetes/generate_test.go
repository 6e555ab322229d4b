package kubernetes

import (
	"bytes"
	"fmt"
	"os"
	"reflect"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// updateEnv set to 1 rewrites the generated manifests instead of comparing
// them (make k8s-generate).
const updateEnv = "EVENTBUS_UPDATE_GENERATED"

// Sources and outputs of the generated manifests.
const (
	alertsSource          = "../prometheus/alerts.yml"
	collectorSource       = "../../otel-collector.yaml"
	prometheusRuleFile    = "prometheusrule.yaml"
	collectorConfigMapOut = "collector-configmap.yaml"
	prometheusRuleName    = "eventbus-sidecar-alerts"
)

func generatedHeader(source string) string {
	return fmt.Sprintf("# Generated from %s by `make k8s-generate`; do not edit.\n"+
		"# deploy/kubernetes tests fail when this file and its source differ.\n", source)
}

// buildPrometheusRule wraps the groups of alerts.yml in a PrometheusRule.
// Decoding alerts.yml strictly into the operator's RuleGroup type also
// proves that every field of the rule file is one the operator knows.
func buildPrometheusRule(alerts []byte) ([]byte, error) {
	var file struct {
		Groups []monitoringv1.RuleGroup `json:"groups"`
	}
	if err := yaml.UnmarshalStrict(alerts, &file); err != nil {
		return nil, fmt.Errorf("%s: %w", alertsSource, err)
	}
	rule := monitoringv1.PrometheusRule{
		TypeMeta: metav1.TypeMeta{APIVersion: monitoringv1.SchemeGroupVersion.String(), Kind: monitoringv1.PrometheusRuleKind},
		ObjectMeta: metav1.ObjectMeta{
			Name: prometheusRuleName,
			Labels: map[string]string{
				"app.kubernetes.io/name":    "eventbus-sidecar",
				"app.kubernetes.io/part-of": "trading",
				// The label kube-prometheus' Prometheus selects rules by.
				"role": "alert-rules",
			},
		},
		Spec: monitoringv1.PrometheusRuleSpec{Groups: file.Groups},
	}
	out, err := yaml.Marshal(rule)
	if err != nil {
		return nil, fmt.Errorf("marshal PrometheusRule: %w", err)
	}
	return append([]byte(generatedHeader("deploy/prometheus/alerts.yml")), out...), nil
}

// buildCollectorConfigMap puts the project's otel-collector.yaml, byte for
// byte, into the collector's ConfigMap.
func buildCollectorConfigMap(collectorConfig []byte) ([]byte, error) {
	cm := corev1.ConfigMap{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: metav1.ObjectMeta{
			Name: collectorConfigMap,
			Labels: map[string]string{
				"app.kubernetes.io/name":    collectorName,
				"app.kubernetes.io/part-of": "trading",
			},
		},
		Data: map[string]string{collectorConfigKey: string(collectorConfig)},
	}
	out, err := yaml.Marshal(cm)
	if err != nil {
		return nil, fmt.Errorf("marshal ConfigMap: %w", err)
	}
	return append([]byte(generatedHeader("otel-collector.yaml")), out...), nil
}

func TestGeneratedManifestsAreCurrent(t *testing.T) {
	tests := []struct {
		source, out string
		build       func([]byte) ([]byte, error)
	}{
		{alertsSource, prometheusRuleFile, buildPrometheusRule},
		{collectorSource, collectorConfigMapOut, buildCollectorConfigMap},
	}
	for _, tc := range tests {
		t.Run(tc.out, func(t *testing.T) {
			src, err := os.ReadFile(tc.source)
			if err != nil {
				t.Fatal(err)
			}
			want, err := tc.build(src)
			if err != nil {
				t.Fatal(err)
			}
			if os.Getenv(updateEnv) == "1" {
				if err := os.WriteFile(tc.out, want, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			got, err := os.ReadFile(tc.out)
			if err != nil {
				t.Fatalf("%v (run make k8s-generate)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from what %s generates; run make k8s-generate", tc.out, tc.source)
			}
		})
	}
}

// TestPrometheusRuleHoldsEveryAlert decodes the committed PrometheusRule
// and compares its rules with alerts.yml field by field, so the check does
// not rest on the generator alone.
func TestPrometheusRuleHoldsEveryAlert(t *testing.T) {
	m := loadManifests(t)
	pr, ok := m.rules[prometheusRuleName]
	if !ok {
		t.Fatalf("no PrometheusRule %s in the kustomization", prometheusRuleName)
	}
	src, err := os.ReadFile(alertsSource)
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Alert       string            `json:"alert"`
				Expr        string            `json:"expr"`
				For         string            `json:"for"`
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.UnmarshalStrict(src, &file); err != nil {
		t.Fatal(err)
	}
	if len(pr.Spec.Groups) != len(file.Groups) {
		t.Fatalf("PrometheusRule has %d groups, alerts.yml %d", len(pr.Spec.Groups), len(file.Groups))
	}
	for i, g := range file.Groups {
		pg := pr.Spec.Groups[i]
		if pg.Name != g.Name || len(pg.Rules) != len(g.Rules) {
			t.Fatalf("group %d: PrometheusRule has %q with %d rules, alerts.yml %q with %d", i, pg.Name, len(pg.Rules), g.Name, len(g.Rules))
		}
		for j, r := range g.Rules {
			pr := pg.Rules[j]
			var forText string
			if pr.For != nil {
				forText = string(*pr.For)
			}
			if pr.Alert != r.Alert || pr.Expr.String() != r.Expr || forText != r.For ||
				!reflect.DeepEqual(pr.Labels, r.Labels) || !reflect.DeepEqual(pr.Annotations, r.Annotations) {
				t.Errorf("rule %s differs between the PrometheusRule and alerts.yml; run make k8s-generate", r.Alert)
			}
		}
	}
}
