package render

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// schemaFile is the machine-readable schema of the json format.
var schemaFile = filepath.Join("..", "..", "docs", "schema", "path.v1.json")

// validator checks a JSON value against the subset of JSON Schema (draft
// 2020-12) that docs/schema/path.v1.json uses: $ref to $defs, const, enum,
// type, properties, required, items, pattern, minimum, maximum and the
// date-time format. It refuses a schema with any other keyword, so that no
// constraint is skipped unnoticed. Strict, it also rejects properties the
// schema does not declare, so that the schema documents every field the
// renderer writes.
type validator struct {
	root   map[string]any
	strict bool
}

// annotations are keywords that constrain nothing.
var annotations = []string{"$schema", "$id", "$defs", "title", "description"}

func (v validator) check(schema map[string]any, value any, at string) []string {
	var errs []string
	fail := func(format string, args ...any) { errs = append(errs, at+": "+fmt.Sprintf(format, args...)) }
	keys := make([]string, 0, len(schema))
	for k := range schema {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		arg := schema[k]
		switch k {
		case "$ref":
			name, ok := strings.CutPrefix(arg.(string), "#/$defs/")
			def, found := v.root["$defs"].(map[string]any)[name].(map[string]any)
			if !ok || !found {
				fail("unresolvable $ref %v", arg)
				continue
			}
			errs = append(errs, v.check(def, value, at)...)
		case "const":
			if value != arg {
				fail("%v, want %v", value, arg)
			}
		case "enum":
			if !slices.Contains(arg.([]any), value) {
				fail("%v is not one of %v", value, arg)
			}
		case "type":
			if !hasType(value, arg.(string)) {
				fail("%T %v is not of type %s", value, value, arg)
			}
		case "required":
			obj, _ := value.(map[string]any)
			for _, name := range arg.([]any) {
				if _, ok := obj[name.(string)]; !ok {
					fail("missing required %q", name)
				}
			}
		case "properties":
			obj, ok := value.(map[string]any)
			if !ok {
				continue
			}
			props := arg.(map[string]any)
			names := make([]string, 0, len(obj))
			for name := range obj {
				names = append(names, name)
			}
			sort.Strings(names)
			for _, name := range names {
				if s, declared := props[name]; declared {
					errs = append(errs, v.check(s.(map[string]any), obj[name], at+"."+name)...)
				} else if v.strict {
					fail("property %q is not in the schema", name)
				}
			}
		case "items":
			list, _ := value.([]any)
			for i, item := range list {
				errs = append(errs, v.check(arg.(map[string]any), item, fmt.Sprintf("%s[%d]", at, i))...)
			}
		case "pattern":
			if s, ok := value.(string); ok && !compiled(arg.(string)).MatchString(s) {
				fail("%q does not match %s", s, arg)
			}
		case "minimum", "maximum":
			n, ok := value.(json.Number)
			if !ok {
				continue
			}
			got, _ := n.Float64()
			limit := arg.(json.Number)
			lim, _ := limit.Float64()
			if k == "minimum" && got < lim || k == "maximum" && got > lim {
				fail("%v is beyond the %s %v", n, k, limit)
			}
		case "format":
			if s, ok := value.(string); ok && arg == "date-time" {
				if _, err := time.Parse(time.RFC3339Nano, s); err != nil {
					fail("%q is not a date-time: %v", s, err)
				}
			}
		default:
			if !slices.Contains(annotations, k) {
				fail("the validator does not know the keyword %q", k)
			}
		}
	}
	return errs
}

var patterns = map[string]*regexp.Regexp{}

// compiled compiles a schema's pattern once.
func compiled(pattern string) *regexp.Regexp {
	if re, ok := patterns[pattern]; ok {
		return re
	}
	re := regexp.MustCompile(pattern)
	patterns[pattern] = re
	return re
}

func hasType(value any, typ string) bool {
	switch typ {
	case "object":
		_, ok := value.(map[string]any)
		return ok
	case "array":
		_, ok := value.([]any)
		return ok
	case "string":
		_, ok := value.(string)
		return ok
	case "boolean":
		_, ok := value.(bool)
		return ok
	case "integer":
		n, ok := value.(json.Number)
		if !ok {
			return false
		}
		return !strings.ContainsAny(n.String(), ".eE")
	case "number":
		_, ok := value.(json.Number)
		return ok
	}
	return false
}

func decode(t *testing.T, b []byte) any {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

func loadSchema(t *testing.T) validator {
	t.Helper()
	b, err := os.ReadFile(schemaFile)
	if err != nil {
		t.Fatal(err)
	}
	return validator{root: decode(t, b).(map[string]any), strict: true}
}

// TestJSONMatchesSchema validates the json output of every fixture against
// docs/schema/path.v1.json.
func TestJSONMatchesSchema(t *testing.T) {
	v := loadSchema(t)
	for name, p := range fixtures(t) {
		if errs := v.check(v.root, decode(t, render(t, p, JSON, Options{})), "path"); len(errs) > 0 {
			t.Errorf("%s:\n%s", name, strings.Join(errs, "\n"))
		}
	}
}

// TestSchemaValidatorRejects makes sure the validator catches what it
// should, so that a passing TestJSONMatchesSchema means something.
func TestSchemaValidatorRejects(t *testing.T) {
	v := loadSchema(t)
	good := render(t, fixtures(t)["nodeport-via-other-node"], JSON, Options{})
	for _, tt := range []struct {
		name, want string
		edit       func(m map[string]any)
	}{
		{"no verdict", `missing required "verdict"`, func(m map[string]any) { delete(m, "verdict") }},
		{"another version", "nettrace/v2, want nettrace/v1", func(m map[string]any) { m["schemaVersion"] = "nettrace/v2" }},
		{"unknown kind", "teleport is not one of", func(m map[string]any) { hop(m, 0)["kind"] = "teleport" }},
		{"port out of range", "70000 is beyond the maximum", func(m map[string]any) { m["flow"].(map[string]any)["srcPort"] = json.Number("70000") }},
		{"ttl as a string", "is not of type integer", func(m map[string]any) { hop(m, 0)["packet"].(map[string]any)["ttl"] = "64" }},
		{"bad address", `"k8s-w1" does not match`, func(m map[string]any) { hop(m, 0)["packet"].(map[string]any)["src"] = "k8s-w1" }},
		{"bad time", "is not a date-time", func(m map[string]any) { m["started"] = "yesterday" }},
		{"undeclared field", `property "hint" is not in the schema`, func(m map[string]any) { hop(m, 1)["hint"] = "x" }},
		{"NAT without tuples", `missing required "original"`, func(m map[string]any) {
			for i := range m["hops"].([]any) {
				if n, ok := hop(m, i)["nat"].(map[string]any); ok {
					delete(n, "original")
				}
			}
		}},
	} {
		m := decode(t, good).(map[string]any)
		tt.edit(m)
		errs := v.check(v.root, m, "path")
		if !slices.ContainsFunc(errs, func(e string) bool { return strings.Contains(e, tt.want) }) {
			t.Errorf("%s: errors %q, want one with %q", tt.name, errs, tt.want)
		}
	}
}

func hop(m map[string]any, i int) map[string]any { return m["hops"].([]any)[i].(map[string]any) }

// TestSchemaDoc checks that docs/schema.md documents every property of the
// JSON Schema and that its example is a valid path.
func TestSchemaDoc(t *testing.T) {
	v := loadSchema(t)
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "schema.md"))
	if err != nil {
		t.Fatal(err)
	}
	var walk func(m map[string]any)
	walk = func(m map[string]any) {
		if props, ok := m["properties"].(map[string]any); ok {
			for name := range props {
				if !bytes.Contains(doc, []byte("`"+name+"`")) {
					t.Errorf("docs/schema.md does not document %q", name)
				}
			}
		}
		for _, sub := range m {
			if s, ok := sub.(map[string]any); ok {
				walk(s)
			}
		}
	}
	walk(v.root)
	_, example, ok := strings.Cut(string(doc), "```json\n")
	example, _, closed := strings.Cut(example, "```")
	if !ok || !closed {
		t.Fatal("docs/schema.md has no json example")
	}
	if errs := v.check(v.root, decode(t, []byte(example)), "example"); len(errs) > 0 {
		t.Errorf("the example of docs/schema.md:\n%s", strings.Join(errs, "\n"))
	}
}
