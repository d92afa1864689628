package render

import (
	"encoding/json"
	"io"

	"sigs.k8s.io/yaml"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// writeJSON writes the path as it is, indented: the schema of
// docs/schema.md.
func writeJSON(w io.Writer, p trace.Path) error {
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// writeYAML writes the JSON form of the path as YAML, so that both carry
// the same field names.
func writeYAML(w io.Writer, p trace.Path) error {
	j, err := json.Marshal(p)
	if err != nil {
		return err
	}
	y, err := yaml.JSONToYAML(j)
	if err != nil {
		return err
	}
	_, err = w.Write(y)
	return err
}
