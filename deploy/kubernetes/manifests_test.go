package kubernetes

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/eventbus-sidecar/eventbus-sidecar/admin"
	"github.com/eventbus-sidecar/eventbus-sidecar/config"
)

// Names the manifests share; the tests check that each side of every
// reference uses the same one.
const (
	sidecarContainer   = "eventbus-sidecar"
	tradingContainer   = "trading"
	tradingDeployment  = "trading"
	sidecarConfigMap   = "eventbus-sidecar-config"
	sidecarConfigKey   = "config.yaml"
	socketVolume       = "eventbus-socket"
	collectorName      = "otel-collector"
	collectorConfigMap = "otel-collector-config"
	collectorConfigKey = "otel-collector.yaml"
)

// kustomization is the part of kustomize's Kustomization this folder uses,
// declared here (kustomize's API module is heavy) and decoded strictly, so
// a field this type does not know fails the test instead of being ignored.
type kustomization struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Labels     []struct {
		Pairs map[string]string `json:"pairs"`
	} `json:"labels"`
	Resources []string `json:"resources"`
	Images    []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
	} `json:"images"`
}

// newDecoder returns the API machinery's universal deserializer in strict
// mode (unknown and duplicate fields are errors, field names are case
// sensitive) for the core, apps and Prometheus Operator monitoring types.
func newDecoder(t *testing.T) runtime.Decoder {
	t.Helper()
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, monitoringv1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	return serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
}

// manifests holds every object of the kustomization, decoded.
type manifests struct {
	kust        kustomization
	deployments map[string]*appsv1.Deployment
	configMaps  map[string]*corev1.ConfigMap
	services    map[string]*corev1.Service
	podMonitors map[string]*monitoringv1.PodMonitor
	rules       map[string]*monitoringv1.PrometheusRule
	claims      map[string]*corev1.PersistentVolumeClaim
}

func loadKustomization(t *testing.T) kustomization {
	t.Helper()
	data, err := os.ReadFile("kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var k kustomization
	if err := yaml.UnmarshalStrict(data, &k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		t.Fatalf("kustomization.yaml: %s %s, want kustomize.config.k8s.io/v1beta1 Kustomization", k.APIVersion, k.Kind)
	}
	return k
}

// decodeManifest decodes one file, which must hold exactly one object.
func decodeManifest(dec runtime.Decoder, data []byte) (runtime.Object, error) {
	if bytes.Contains(data, []byte("\n---")) {
		return nil, fmt.Errorf("more than one document; keep one object per file")
	}
	obj, _, err := dec.Decode(data, nil, nil)
	return obj, err
}

func loadManifests(t *testing.T) manifests {
	t.Helper()
	m := manifests{
		kust:        loadKustomization(t),
		deployments: map[string]*appsv1.Deployment{},
		configMaps:  map[string]*corev1.ConfigMap{},
		services:    map[string]*corev1.Service{},
		podMonitors: map[string]*monitoringv1.PodMonitor{},
		rules:       map[string]*monitoringv1.PrometheusRule{},
		claims:      map[string]*corev1.PersistentVolumeClaim{},
	}
	dec := newDecoder(t)
	for _, file := range m.kust.Resources {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatalf("kustomization resource: %v", err)
		}
		obj, err := decodeManifest(dec, data)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		switch o := obj.(type) {
		case *appsv1.Deployment:
			m.deployments[o.Name] = o
		case *corev1.ConfigMap:
			m.configMaps[o.Name] = o
		case *corev1.Service:
			m.services[o.Name] = o
		case *monitoringv1.PodMonitor:
			m.podMonitors[o.Name] = o
		case *monitoringv1.PrometheusRule:
			m.rules[o.Name] = o
		case *corev1.PersistentVolumeClaim:
			m.claims[o.Name] = o
		default:
			t.Fatalf("%s: %T is not a kind these tests check; add its checks", file, obj)
		}
	}
	return m
}

func TestEveryManifestIsInTheKustomization(t *testing.T) {
	k := loadKustomization(t)
	files, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if f != "kustomization.yaml" && !slices.Contains(k.Resources, f) {
			t.Errorf("%s is not listed in kustomization.yaml's resources", f)
		}
	}
	loadManifests(t) // every listed resource decodes strictly
}

// TestDecodingIsStrict proves the decoder refuses what kubectl apply would
// refuse or silently drop: an unknown field, a misspelt (wrong case) field,
// a duplicate field.
func TestDecodingIsStrict(t *testing.T) {
	base, err := os.ReadFile("collector-service.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dec := newDecoder(t)
	if _, err := decodeManifest(dec, base); err != nil {
		t.Fatalf("unmodified collector-service.yaml: %v", err)
	}
	tests := []struct {
		name string
		edit func(string) string
	}{
		{"unknown field", func(s string) string {
			return strings.Replace(s, "spec:\n", "spec:\n  clusterIPs_typo: [x]\n", 1)
		}},
		{"wrong case", func(s string) string { return strings.Replace(s, "targetPort:", "TargetPort:", 1) }},
		{"duplicate field", func(s string) string {
			return strings.Replace(s, "spec:\n", "spec:\n  type: ClusterIP\n  type: NodePort\n", 1)
		}},
		{"two documents", func(s string) string { return s + "\n---\n" + s }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			edited := tc.edit(string(base))
			if edited == string(base) {
				t.Fatal("edit did not change the manifest")
			}
			if _, err := decodeManifest(dec, []byte(edited)); err == nil {
				t.Errorf("decoder accepted the manifest with a %s", tc.name)
			}
		})
	}
}

func (m manifests) deployment(t *testing.T, name string) *appsv1.Deployment {
	t.Helper()
	d, ok := m.deployments[name]
	if !ok {
		t.Fatalf("no Deployment %q in the kustomization", name)
	}
	return d
}

func findContainer(t *testing.T, spec *corev1.PodSpec, name string) *corev1.Container {
	t.Helper()
	for _, list := range [][]corev1.Container{spec.InitContainers, spec.Containers} {
		for i := range list {
			if list[i].Name == name {
				return &list[i]
			}
		}
	}
	t.Fatalf("pod has no container %q", name)
	return nil
}

// sidecarConfig loads the sidecar ConfigMap's file through the sidecar's
// own config package, as `eventbus-sidecar serve --config` would.
func (m manifests) sidecarConfig(t *testing.T) config.Config {
	t.Helper()
	cm, ok := m.configMaps[sidecarConfigMap]
	if !ok {
		t.Fatalf("no ConfigMap %q", sidecarConfigMap)
	}
	data, ok := cm.Data[sidecarConfigKey]
	if !ok {
		t.Fatalf("ConfigMap %s has no key %s", sidecarConfigMap, sidecarConfigKey)
	}
	cfg, err := config.Parse([]byte(data), "ConfigMap "+sidecarConfigMap)
	if err != nil {
		t.Fatalf("sidecar config: %v", err)
	}
	return cfg
}

// resolvePort turns a probe's or Service's port (number or name) into the
// container port number it refers to.
func resolvePort(t *testing.T, c *corev1.Container, p intstr.IntOrString) int32 {
	t.Helper()
	if p.Type == intstr.Int {
		return p.IntVal
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return cp.ContainerPort
		}
	}
	t.Fatalf("container %s has no port named %q", c.Name, p.StrVal)
	return 0
}

func mountFor(t *testing.T, c *corev1.Container, volume string) corev1.VolumeMount {
	t.Helper()
	for _, vm := range c.VolumeMounts {
		if vm.Name == volume {
			return vm
		}
	}
	t.Fatalf("container %s does not mount volume %q", c.Name, volume)
	return corev1.VolumeMount{}
}

func TestSidecarIsANativeSidecarWithWorkingProbes(t *testing.T) {
	m := loadManifests(t)
	spec := &m.deployment(t, tradingDeployment).Spec.Template.Spec
	sc := findContainer(t, spec, sidecarContainer)
	if !slices.ContainsFunc(spec.InitContainers, func(c corev1.Container) bool { return c.Name == sidecarContainer }) {
		t.Fatalf("%s is not an init container", sidecarContainer)
	}
	if sc.RestartPolicy == nil || *sc.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Fatalf("%s: restartPolicy %v, want Always (a native sidecar)", sidecarContainer, sc.RestartPolicy)
	}
	cfg := m.sidecarConfig(t)
	if !cfg.AdminEnabled() {
		t.Fatal("sidecar config turns the admin listener off; the probes need it")
	}
	host, portText, err := net.SplitHostPort(cfg.AdminAddr)
	if err != nil {
		t.Fatal(err)
	}
	if ip := net.ParseIP(host); host != "" && (ip == nil || ip.IsLoopback()) {
		t.Errorf("admin_addr %q: the kubelet probes the pod IP, so the admin listener must not be on loopback", cfg.AdminAddr)
	}
	adminPort, err := strconv.Atoi(portText)
	if err != nil {
		t.Fatal(err)
	}

	// The probes must hit paths the real admin handler serves: 200 when
	// ready, and /readyz 503 while draining (so the startup and readiness
	// probes mean what they say).
	probe := func(ready bool, p string) int {
		srv, err := admin.New(admin.Config{Addr: cfg.AdminAddr, Ready: func() bool { return ready }})
		if err != nil {
			t.Fatal(err)
		}
		rec := httptest.NewRecorder()
		srv.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, p, nil))
		return rec.Code
	}
	probes := []struct {
		name      string
		probe     *corev1.Probe
		wantPath  string
		readiness bool
	}{
		{"startupProbe", sc.StartupProbe, "/readyz", true},
		{"readinessProbe", sc.ReadinessProbe, "/readyz", true},
		{"livenessProbe", sc.LivenessProbe, "/healthz", false},
	}
	for _, p := range probes {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("%s: want an httpGet probe on %s", p.name, p.wantPath)
			continue
		}
		g := p.probe.HTTPGet
		if g.Path != p.wantPath {
			t.Errorf("%s: path %q, want %q", p.name, g.Path, p.wantPath)
		}
		if port := resolvePort(t, sc, g.Port); int(port) != adminPort {
			t.Errorf("%s: port %d, but the config's admin_addr listens on %d", p.name, port, adminPort)
		}
		if code := probe(true, g.Path); code != http.StatusOK {
			t.Errorf("%s: the admin handler answers %s with %d when ready, want 200", p.name, g.Path, code)
		}
		if code := probe(false, g.Path); p.readiness && code != http.StatusServiceUnavailable {
			t.Errorf("%s: the admin handler answers %s with %d while draining, want 503", p.name, g.Path, code)
		}
	}

	// The flags in args must be flags serve has: --config plus the
	// settings' flags.
	flags := map[string]bool{"config": true}
	for _, s := range config.Settings() {
		flags[s.Flag] = true
	}
	if len(sc.Args) == 0 || sc.Args[0] != "serve" {
		t.Fatalf("sidecar args %q, want serve first", sc.Args)
	}
	var configPath string
	for i, a := range sc.Args[1:] {
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "--") {
			continue
		}
		if !flags[name] {
			t.Errorf("sidecar arg %q: serve has no flag --%s", a, name)
		}
		if name == "config" {
			configPath = value
			if !hasValue && i+2 < len(sc.Args) {
				configPath = sc.Args[i+2]
			}
		}
	}
	cfgMount := mountFor(t, sc, sidecarConfigMap)
	if want := path.Join(cfgMount.MountPath, sidecarConfigKey); configPath != want {
		t.Errorf("--config %q, but the ConfigMap's %s is mounted at %s", configPath, sidecarConfigKey, want)
	}

	// Environment variables named like settings must be real ones.
	envs := map[string]bool{}
	for _, s := range config.Settings() {
		envs[s.Env()] = true
	}
	for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
		for _, e := range c.Env {
			if strings.HasPrefix(e.Name, config.EnvPrefix) && !envs[e.Name] {
				t.Errorf("container %s: %s is not a setting the sidecar reads", c.Name, e.Name)
			}
		}
	}

	grace := int64(30)
	if spec.TerminationGracePeriodSeconds != nil {
		grace = *spec.TerminationGracePeriodSeconds
	}
	if total := cfg.DrainTimeout + config.CloseGrace; total.Seconds() >= float64(grace) {
		t.Errorf("drain_timeout %s + %s to close and flush is not shorter than terminationGracePeriodSeconds %d: the kubelet would kill the shutdown", cfg.DrainTimeout, config.CloseGrace, grace)
	}
}

func TestSocketIsSharedThroughAnEmptyDirWithAGroup(t *testing.T) {
	m := loadManifests(t)
	spec := &m.deployment(t, tradingDeployment).Spec.Template.Spec
	cfg := m.sidecarConfig(t)
	var vol *corev1.Volume
	for i := range spec.Volumes {
		if spec.Volumes[i].Name == socketVolume {
			vol = &spec.Volumes[i]
		}
	}
	if vol == nil || vol.EmptyDir == nil {
		t.Fatalf("pod needs an emptyDir volume %q for the socket", socketVolume)
	}
	for _, name := range []string{sidecarContainer, tradingContainer} {
		c := findContainer(t, spec, name)
		vm := mountFor(t, c, socketVolume)
		if vm.ReadOnly {
			t.Errorf("%s mounts the socket volume read-only; connecting to a socket needs write access", name)
		}
		if path.Dir(cfg.Socket) != path.Clean(vm.MountPath) {
			t.Errorf("%s mounts the socket volume at %s, but the sidecar's socket is %s", name, vm.MountPath, cfg.Socket)
		}
	}
	tc := findContainer(t, spec, tradingContainer)
	var socketEnv string
	for _, e := range tc.Env {
		if e.Name == config.EnvPrefix+"SOCKET" {
			socketEnv = e.Value
		}
	}
	if socketEnv != cfg.Socket {
		t.Errorf("trading container's %sSOCKET = %q, sidecar's socket = %q", config.EnvPrefix, socketEnv, cfg.Socket)
	}
	if cfg.SocketMode.Perm()&0o007 != 0 || cfg.SocketMode.Perm()&0o060 != 0o060 {
		t.Errorf("socket_mode %o: want group read-write and nothing for others", cfg.SocketMode.Perm())
	}
	if spec.SecurityContext == nil || spec.SecurityContext.FSGroup == nil {
		t.Fatal("pod has no fsGroup: the trading container could not reach a 0660 socket owned by another user")
	}
}

func TestSecurityContextsAndResources(t *testing.T) {
	m := loadManifests(t)
	for _, d := range m.deployments {
		spec := &d.Spec.Template.Spec
		psc := spec.SecurityContext
		if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
			t.Errorf("Deployment %s: pod securityContext.runAsNonRoot must be true", d.Name)
		}
		if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("Deployment %s: want seccompProfile RuntimeDefault", d.Name)
		}
		users := map[int64]string{}
		for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
			where := fmt.Sprintf("Deployment %s container %s", d.Name, c.Name)
			sc := c.SecurityContext
			if sc == nil {
				t.Errorf("%s: no securityContext", where)
				continue
			}
			if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
				t.Errorf("%s: readOnlyRootFilesystem must be true", where)
			}
			if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				t.Errorf("%s: allowPrivilegeEscalation must be false", where)
			}
			if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
				t.Errorf("%s: must drop ALL capabilities", where)
			}
			uid := sc.RunAsUser
			if uid == nil && psc != nil {
				uid = psc.RunAsUser
			}
			if uid == nil || *uid == 0 {
				t.Errorf("%s: needs a non-zero runAsUser", where)
			} else {
				if other, ok := users[*uid]; ok {
					t.Errorf("%s runs as the same user %d as %s; the sidecar pair uses different users and a shared group", where, *uid, other)
				}
				users[*uid] = c.Name
			}
			for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
				req, okReq := c.Resources.Requests[res]
				lim, okLim := c.Resources.Limits[res]
				if !okReq || !okLim {
					t.Errorf("%s: needs both a request and a limit for %s", where, res)
					continue
				}
				if req.Cmp(lim) > 0 {
					t.Errorf("%s: %s request %s above its limit %s", where, res, req.String(), lim.String())
				}
			}
		}
	}
}

// TestVolumesAndConfigMapsResolve checks every volume mount and ConfigMap
// reference of every Deployment.
func TestVolumesAndConfigMapsResolve(t *testing.T) {
	m := loadManifests(t)
	for _, d := range m.deployments {
		spec := &d.Spec.Template.Spec
		sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
		if err != nil {
			t.Fatalf("Deployment %s: %v", d.Name, err)
		}
		if !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
			t.Errorf("Deployment %s: selector %s does not match its pod labels %v", d.Name, sel, d.Spec.Template.Labels)
		}
		volumes := map[string]corev1.Volume{}
		for _, v := range spec.Volumes {
			volumes[v.Name] = v
			if v.ConfigMap == nil {
				continue
			}
			cm, ok := m.configMaps[v.ConfigMap.Name]
			if !ok {
				t.Errorf("Deployment %s volume %s: no ConfigMap %q in the kustomization", d.Name, v.Name, v.ConfigMap.Name)
				continue
			}
			for _, item := range v.ConfigMap.Items {
				if _, ok := cm.Data[item.Key]; !ok {
					t.Errorf("Deployment %s volume %s: ConfigMap %s has no key %q", d.Name, v.Name, cm.Name, item.Key)
				}
			}
		}
		used := map[string]bool{}
		for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
			for _, vm := range c.VolumeMounts {
				used[vm.Name] = true
				if _, ok := volumes[vm.Name]; !ok {
					t.Errorf("Deployment %s container %s mounts undefined volume %q", d.Name, c.Name, vm.Name)
				}
			}
		}
		for name := range volumes {
			if !used[name] {
				t.Errorf("Deployment %s: volume %q is mounted by no container", d.Name, name)
			}
		}
	}
}

func TestCollectorWiring(t *testing.T) {
	m := loadManifests(t)
	cfg := m.sidecarConfig(t)
	host, portText, err := net.SplitHostPort(cfg.Telemetry.OTLPEndpoint)
	if err != nil {
		t.Fatalf("telemetry.otlp_endpoint %q: %v", cfg.Telemetry.OTLPEndpoint, err)
	}
	svc, ok := m.services[host]
	if !ok {
		t.Fatalf("telemetry.otlp_endpoint %q names no Service in the kustomization", cfg.Telemetry.OTLPEndpoint)
	}
	// The example collector's OTLP receiver serves plaintext gRPC; a bare
	// host:port endpoint means TLS unless otlp_insecure is set, and the
	// export would fail on every attempt.
	if !cfg.Telemetry.OTLPInsecure {
		t.Errorf("telemetry.otlp_endpoint %q is a bare host:port without telemetry.otlp_insecure: the sidecar would dial the plaintext collector with TLS", cfg.Telemetry.OTLPEndpoint)
	}
	d := m.deployment(t, collectorName)
	spec := &d.Spec.Template.Spec
	c := findContainer(t, spec, collectorName)
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Errorf("Service %s selector %v does not match the collector's pod labels %v", svc.Name, svc.Spec.Selector, d.Spec.Template.Labels)
	}
	var otlpFound bool
	for _, p := range svc.Spec.Ports {
		target := resolvePort(t, c, p.TargetPort)
		if strconv.Itoa(int(p.Port)) == portText {
			otlpFound = true
			if target != 4317 {
				t.Errorf("Service %s port %d goes to container port %d, want the OTLP gRPC receiver 4317", svc.Name, p.Port, target)
			}
		}
	}
	if !otlpFound {
		t.Errorf("Service %s has no port %s for telemetry.otlp_endpoint", svc.Name, portText)
	}

	// The collector runs the project's otel-collector.yaml, and every
	// OTELCOL_* variable set here is one that file reads.
	cm, ok := m.configMaps[collectorConfigMap]
	if !ok {
		t.Fatalf("no ConfigMap %s", collectorConfigMap)
	}
	collectorConfig := cm.Data[collectorConfigKey]
	mount := mountFor(t, c, collectorConfigMap)
	if want := "--config=" + path.Join(mount.MountPath, collectorConfigKey); !slices.Contains(c.Args, want) {
		t.Errorf("collector args %q, want %s", c.Args, want)
	}
	for _, e := range c.Env {
		if !strings.Contains(collectorConfig, "${env:"+e.Name+":") && !strings.Contains(collectorConfig, "${env:"+e.Name+"}") {
			t.Errorf("collector env %s is not read by %s", e.Name, collectorConfigKey)
		}
	}
	for _, p := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe} {
		if p == nil || p.TCPSocket == nil {
			t.Error("collector needs tcpSocket readiness and liveness probes")
			continue
		}
		resolvePort(t, c, p.TCPSocket.Port)
	}
}

func TestPodMonitorScrapesTheSidecar(t *testing.T) {
	m := loadManifests(t)
	pm, ok := m.podMonitors["eventbus-sidecar"]
	if !ok {
		t.Fatal("no PodMonitor eventbus-sidecar")
	}
	d := m.deployment(t, tradingDeployment)
	sel, err := metav1.LabelSelectorAsSelector(&pm.Spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	if !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Errorf("PodMonitor selector %s does not match the trading pods' labels %v", sel, d.Spec.Template.Labels)
	}
	sc := findContainer(t, &d.Spec.Template.Spec, sidecarContainer)
	for _, ep := range pm.Spec.PodMetricsEndpoints {
		if ep.Port == nil {
			t.Error("PodMonitor endpoint without a port name")
			continue
		}
		resolvePort(t, sc, intstr.FromString(*ep.Port))
		if ep.Path != "/metrics" {
			t.Errorf("PodMonitor path %q, want /metrics", ep.Path)
		}
		var job bool
		for _, r := range ep.RelabelConfigs {
			if r.TargetLabel == "job" && r.Replacement != nil && *r.Replacement == "eventbus-sidecar" {
				job = true
			}
		}
		if !job {
			t.Error(`PodMonitor must set job="eventbus-sidecar": EventBusSidecarDown selects up{job="eventbus-sidecar"}`)
		}
	}
}

func TestKustomizationImagesMatchContainers(t *testing.T) {
	m := loadManifests(t)
	images := map[string]string{}
	for _, d := range m.deployments {
		spec := &d.Spec.Template.Spec
		for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
			name, tag, _ := strings.Cut(c.Image, ":")
			if tag == "" || tag == "latest" {
				t.Errorf("container %s: image %q needs a pinned tag", c.Name, c.Image)
			}
			images[name] = tag
		}
	}
	for _, img := range m.kust.Images {
		tag, ok := images[img.Name]
		if !ok {
			t.Errorf("kustomization images: %s matches no container image", img.Name)
			continue
		}
		if img.NewTag != "" && img.NewTag != tag {
			t.Errorf("kustomization images: %s newTag %s, but the manifest pins %s", img.Name, img.NewTag, tag)
		}
	}
}

// TestKustomizeBuildRenders renders the folder with kubectl's built-in
// kustomize, as `kubectl apply -k` would, and decodes the result strictly:
// every resource comes out, with the kustomization's labels and images
// applied.
func TestKustomizeBuildRenders(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Fatalf("kubectl (with its built-in kustomize) is needed to render kustomization.yaml: %v", err)
	}
	cmd := exec.Command(kubectl, "kustomize", ".")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl kustomize: %v\n%s", err, stderr.String())
	}
	m := loadManifests(t)
	want := map[string]bool{}
	for name := range m.deployments {
		want["Deployment/"+name] = true
	}
	for name := range m.configMaps {
		want["ConfigMap/"+name] = true
	}
	for name := range m.services {
		want["Service/"+name] = true
	}
	for name := range m.podMonitors {
		want["PodMonitor/"+name] = true
	}
	for name := range m.rules {
		want["PrometheusRule/"+name] = true
	}
	for name := range m.claims {
		want["PersistentVolumeClaim/"+name] = true
	}
	commonLabels := map[string]string{}
	for _, l := range m.kust.Labels {
		for k, v := range l.Pairs {
			commonLabels[k] = v
		}
	}
	dec := newDecoder(t)
	got := map[string]bool{}
	for _, doc := range strings.Split(string(out), "\n---\n") {
		obj, err := decodeManifest(dec, []byte(doc))
		if err != nil {
			t.Fatalf("rendered document: %v\n%s", err, doc)
		}
		meta, err := apimeta.Accessor(obj)
		if err != nil {
			t.Fatal(err)
		}
		kind := obj.GetObjectKind().GroupVersionKind().Kind
		got[kind+"/"+meta.GetName()] = true
		for k, v := range commonLabels {
			if meta.GetLabels()[k] != v {
				t.Errorf("rendered %s/%s lacks the kustomization label %s=%s", kind, meta.GetName(), k, v)
			}
		}
		if d, ok := obj.(*appsv1.Deployment); ok {
			spec := &d.Spec.Template.Spec
			for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
				name, tag, _ := strings.Cut(c.Image, ":")
				for _, img := range m.kust.Images {
					if img.Name == name && img.NewTag != "" && img.NewTag != tag {
						t.Errorf("rendered %s container %s: image %s, want tag %s", d.Name, c.Name, c.Image, img.NewTag)
					}
				}
			}
		}
	}
	for k := range want {
		if !got[k] {
			t.Errorf("kubectl kustomize did not render %s", k)
		}
	}
	for k := range got {
		if !want[k] {
			t.Errorf("kubectl kustomize rendered unexpected %s", k)
		}
	}
}
