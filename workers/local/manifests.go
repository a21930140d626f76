package local

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/resources"
	"github.com/tallyhq/tally/workers/source"
)

// LoadManifests reads every SegmentSource and Secret in the YAML or JSON files of dir (the same
// manifests a user would kubectl apply) and resolves each source's write keys. Suspended sources
// are skipped.
func LoadManifests(dir string) ([]*source.Config, error) {
	var sources []tallyv1.SegmentSource
	secrets := map[string]corev1.Secret{} // namespace/name
	err := eachManifest(dir, func(file string, meta metav1.TypeMeta, doc []byte) error {
		switch {
		case meta.Kind == "SegmentSource" && meta.APIVersion == tallyv1.GroupVersion.String():
			var s tallyv1.SegmentSource
			if err := yaml.UnmarshalStrict(doc, &s); err != nil {
				return fmt.Errorf("%s: SegmentSource: %w", file, err)
			}
			defaultNamespace(&s.Namespace)
			sources = append(sources, s)
		case meta.Kind == "Secret" && meta.APIVersion == "v1":
			var s corev1.Secret
			if err := yaml.Unmarshal(doc, &s); err != nil {
				return fmt.Errorf("%s: Secret: %w", file, err)
			}
			defaultNamespace(&s.Namespace)
			secrets[s.Namespace+"/"+s.Name] = s
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(sources) == 0 {
		return nil, fmt.Errorf("no SegmentSource found under %s", dir)
	}
	var configs []*source.Config
	seen := map[string]bool{}
	for i := range sources {
		s := &sources[i]
		if s.Spec.Suspend {
			continue
		}
		c := resources.SourceConfig(s)
		if seen[c.String()] {
			return nil, fmt.Errorf("SegmentSource %s is defined twice", c)
		}
		seen[c.String()] = true
		// lines reads a Secret key of the source's namespace as newline-separated values.
		lines := func(what, name, key string) ([]string, error) {
			secret, ok := secrets[s.Namespace+"/"+name]
			if !ok {
				return nil, fmt.Errorf("SegmentSource %s: %sSecret %q not found in %s", c, what, name, dir)
			}
			value, ok := secretValue(&secret, key)
			if !ok {
				return nil, fmt.Errorf("SegmentSource %s: Secret %q has no key %q", c, name, key)
			}
			return source.ParseWriteKeys(value), nil
		}
		var err error
		if c.WriteKeys, err = lines("", s.Spec.WriteKeySecretRef.Name, s.WriteKeyKey()); err != nil {
			return nil, err
		}
		if ref := s.Spec.Destination.SharedSecretRef; ref != nil {
			if c.SharedSecrets, err = lines("shared secret ", ref.Name, ref.SharedSecretKey()); err != nil {
				return nil, err
			}
			if len(c.SharedSecrets) == 0 {
				return nil, fmt.Errorf("SegmentSource %s: Secret %q holds no shared secret under %q", c, ref.Name, ref.SharedSecretKey())
			}
		}
		if c.Insights != nil { // spec.insights, not suspended
			ref := s.Spec.Insights.WriteKeySecretRef
			keys, err := lines("insights write key ", ref.Name, ref.WriteKeyKey())
			if err != nil {
				return nil, err
			}
			if len(keys) == 0 {
				return nil, fmt.Errorf("SegmentSource %s: Secret %q holds no insights write key under %q", c, ref.Name, ref.WriteKeyKey())
			}
			c.Insights.WriteKey = keys[0]
		}
		if err := c.Validate(); err != nil {
			return nil, err
		}
		configs = append(configs, c)
	}
	return configs, nil
}

func secretValue(s *corev1.Secret, key string) (string, bool) {
	if v, ok := s.StringData[key]; ok {
		return v, true
	}
	v, ok := s.Data[key]
	return string(v), ok
}

func defaultNamespace(ns *string) {
	if *ns == "" {
		*ns = "default"
	}
}

// eachManifest calls fn with every document of the manifest files of dir, its file and its kind.
func eachManifest(dir string, fn func(file string, meta metav1.TypeMeta, doc []byte) error) error {
	files, err := manifestFiles(dir)
	if err != nil {
		return err
	}
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			return err
		}
		docs, err := splitDocuments(data)
		if err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		for _, doc := range docs {
			var meta metav1.TypeMeta
			if err := yaml.Unmarshal(doc, &meta); err != nil {
				return fmt.Errorf("%s: %w", file, err)
			}
			if err := fn(file, meta, doc); err != nil {
				return err
			}
		}
	}
	return nil
}

func manifestFiles(dir string) ([]string, error) {
	var files []string
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch strings.ToLower(filepath.Ext(path)) {
		case ".yaml", ".yml", ".json":
			if !d.IsDir() && filepath.Base(path) != "kustomization.yaml" {
				files = append(files, path)
			}
		}
		return nil
	})
	slices.Sort(files)
	return files, err
}

func splitDocuments(data []byte) ([][]byte, error) {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs [][]byte
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		if len(bytes.TrimSpace(doc)) > 0 {
			docs = append(docs, doc)
		}
	}
}
