package assert

import (
	"errors"
	"fmt"
	"net/netip"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/kubectl-nettrace/nettrace/trace"
	"github.com/kubectl-nettrace/nettrace/trace/cluster"
)

// Error is a mistake in an expectation file, at a line.
type Error struct {
	File string
	Line int
	// Field is where in the file: "cases[0].expect.nat[0].type".
	Field string
	Msg   string
}

func (e *Error) Error() string {
	switch {
	case e.Field == "":
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	case e.Line == 0:
		return fmt.Sprintf("%s: %s: %s", e.File, e.Field, e.Msg)
	}
	return fmt.Sprintf("%s:%d: %s: %s", e.File, e.Line, e.Field, e.Msg)
}

// Parse reads the expectation file named name. It reports every mistake
// it finds, each an *Error with its line, joined.
func Parse(name string, data []byte) (*File, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, syntaxError(name, err)
	}
	p := &parser{file: name}
	f := &File{Name: name}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		p.fail(nil, "", "no cases: the file is empty")
		return nil, p.err()
	}
	p.top(f, doc.Content[0])
	if err := p.err(); err != nil {
		return nil, err
	}
	return f, nil
}

// yamlLine finds the line in the YAML library's messages: "yaml: line 3: …".
var yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

// syntaxError turns the YAML library's error into errors with the file's
// name and lines.
func syntaxError(name string, err error) error {
	var te *yaml.TypeError
	msgs := []string{err.Error()}
	if errors.As(err, &te) {
		msgs = te.Errors
	}
	var errs []error
	for _, m := range msgs {
		m = strings.TrimPrefix(m, "yaml: ")
		if sub := yamlLine.FindStringSubmatch(m); sub != nil {
			line, _ := strconv.Atoi(sub[1])
			errs = append(errs, &Error{File: name, Line: line, Msg: sub[2]})
			continue
		}
		errs = append(errs, fmt.Errorf("%s: %s", name, m))
	}
	return errors.Join(errs...)
}

// parser walks the YAML nodes of a file and collects its mistakes.
type parser struct {
	file string
	errs []error
}

func (p *parser) fail(n *yaml.Node, field, format string, args ...any) {
	line := 1
	if n != nil {
		line = n.Line
	}
	p.errs = append(p.errs, &Error{File: p.file, Line: line, Field: field, Msg: fmt.Sprintf(format, args...)})
}

// err joins the mistakes, in the order of their lines.
func (p *parser) err() error {
	slices.SortStableFunc(p.errs, func(a, b error) int { return a.(*Error).Line - b.(*Error).Line })
	return errors.Join(p.errs...)
}

// fields are the values of a mapping's keys, and the keys' nodes.
type fields struct {
	values map[string]*yaml.Node
	keys   map[string]*yaml.Node
}

func (f fields) get(key string) (*yaml.Node, bool) { n, ok := f.values[key]; return n, ok }

// mapping reads a mapping whose keys are among known; it reports unknown
// and repeated keys. ok is false when n is not a mapping.
func (p *parser) mapping(n *yaml.Node, field string, known ...string) (fields, bool) {
	f := fields{values: map[string]*yaml.Node{}, keys: map[string]*yaml.Node{}}
	n = resolve(n)
	if n.Kind != yaml.MappingNode {
		p.fail(n, field, "want a mapping of %s, got %s", list(known), describe(n))
		return f, false
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		name := k.Value
		at := join(field, name)
		switch {
		case k.Kind != yaml.ScalarNode:
			p.fail(k, field, "want a field name, got %s", describe(k))
		case !slices.Contains(known, name):
			p.fail(k, at, "unknown field: want %s", list(known))
		case f.values[name] != nil:
			p.fail(k, at, "given twice, first on line %d", f.keys[name].Line)
		default:
			f.values[name], f.keys[name] = v, k
		}
	}
	return f, true
}

// resolve follows an alias to its anchor.
func resolve(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// describe names what a node holds, for errors: `"DANT"`, "a list".
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	if n.ShortTag() == "!!null" {
		return "nothing"
	}
	return strconv.Quote(n.Value)
}

func join(field, key string) string {
	if field == "" {
		return key
	}
	return field + "." + key
}

func index(field string, i int) string { return fmt.Sprintf("%s[%d]", field, i) }

// list writes "a, b or c".
func list(words []string) string {
	if len(words) < 2 {
		return strings.Join(words, "")
	}
	return strings.Join(words[:len(words)-1], ", ") + " or " + words[len(words)-1]
}

// str reads a string.
func (p *parser) str(n *yaml.Node, field string) (string, bool) {
	n = resolve(n)
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
		p.fail(n, field, "want a string, got %s", describe(n))
		return "", false
	}
	return n.Value, true
}

// boolean reads true or false.
func (p *parser) boolean(n *yaml.Node, field string) (bool, bool) {
	n = resolve(n)
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!bool" {
		var b bool
		if err := n.Decode(&b); err == nil {
			return b, true
		}
	}
	p.fail(n, field, "want true or false, got %s", describe(n))
	return false, false
}

// port reads a port number, 1-65535.
func (p *parser) port(n *yaml.Node, field string) (uint16, bool) {
	n = resolve(n)
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!int" {
		if v, err := strconv.ParseUint(n.Value, 10, 16); err == nil && v > 0 {
			return uint16(v), true
		}
	}
	p.fail(n, field, "want a port, 1-65535, got %s", describe(n))
	return 0, false
}

// duration reads a positive Go duration: "5s", "1m".
func (p *parser) duration(n *yaml.Node, field string) (time.Duration, bool) {
	s, ok := p.str(n, field)
	if !ok {
		return 0, false
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		p.fail(n, field, "want a positive duration such as 5s or 1m, got %q", s)
		return 0, false
	}
	return d, true
}

// sequence reads a list.
func (p *parser) sequence(n *yaml.Node, field string) ([]*yaml.Node, bool) {
	n = resolve(n)
	if n.Kind != yaml.SequenceNode {
		p.fail(n, field, "want a list, got %s", describe(n))
		return nil, false
	}
	return n.Content, true
}

// top reads the top of the file: the defaults and the cases.
func (p *parser) top(f *File, n *yaml.Node) {
	top, ok := p.mapping(n, "", "namespace", "timeout", "cases")
	if !ok {
		return
	}
	var defaults Case
	if v, ok := top.get("namespace"); ok {
		defaults.Namespace = p.namespace(v, "namespace")
	}
	if v, ok := top.get("timeout"); ok {
		defaults.Timeout, _ = p.duration(v, "timeout")
	}
	v, ok := top.get("cases")
	if !ok {
		p.fail(resolve(n), "cases", "missing: the file must list its cases")
		return
	}
	items, ok := p.sequence(v, "cases")
	if ok && len(items) == 0 {
		p.fail(v, "cases", "no cases: the list is empty")
	}
	names := map[string]string{}
	for i, item := range items {
		c := defaults
		c.Field, c.Line = index("cases", i), resolve(item).Line
		p.caseOf(&c, item)
		if first, ok := names[c.Name]; ok && c.Name != "" {
			p.fail(item, c.Field+".name", "%q names %s too: give each case a name of its own", c.Name, first)
		}
		names[c.Name] = c.Field
		f.Cases = append(f.Cases, c)
	}
}

// namespace reads a namespace's name.
func (p *parser) namespace(n *yaml.Node, field string) string {
	s, ok := p.str(n, field)
	if ok && len(validation.IsDNS1123Label(s)) > 0 {
		p.fail(n, field, "%q is not a namespace name", s)
	}
	return s
}

// caseOf reads one case.
func (p *parser) caseOf(c *Case, n *yaml.Node) {
	m, ok := p.mapping(n, c.Field, "name", "source", "target", "namespace", "proto", "port", "live", "timeout", "send", "expect")
	if !ok {
		return
	}
	at := func(key string) string { return join(c.Field, key) }
	required := func(key string) (*yaml.Node, bool) {
		v, ok := m.get(key)
		if !ok {
			p.fail(resolve(n), at(key), "missing")
		}
		return v, ok
	}
	if v, ok := m.get("name"); ok {
		c.Name, _ = p.str(v, at("name"))
	}
	var src cluster.SourceRef
	srcNode, hasSource := required("source")
	if hasSource {
		if s, ok := p.str(srcNode, at("source")); ok {
			c.Source = s
			var err error
			if src, err = cluster.ParseSource(s); err != nil {
				p.fail(srcNode, at("source"), "%v", err)
			}
		}
	}
	if v, ok := required("target"); ok {
		if s, ok := p.str(v, at("target")); ok {
			c.Target = s
			if _, err := cluster.ParseTarget(s); err != nil {
				p.fail(v, at("target"), "%v", err)
			}
		}
	}
	if c.Name == "" {
		c.Name = c.Source + " → " + c.Target
	}
	if v, ok := m.get("namespace"); ok {
		c.Namespace = p.namespace(v, at("namespace"))
	}
	if v, ok := m.get("proto"); ok {
		if s, ok := p.str(v, at("proto")); ok {
			if _, err := trace.ParseProto(s); err != nil {
				p.fail(v, at("proto"), "want tcp, udp or icmp, got %q", s)
			}
			c.Proto = s
		}
	}
	if v, ok := m.get("port"); ok {
		c.Port, _ = p.port(v, at("port"))
	}
	if v, ok := m.get("live"); ok {
		c.Live, _ = p.boolean(v, at("live"))
	}
	if v, ok := m.get("timeout"); ok {
		c.Timeout, _ = p.duration(v, at("timeout"))
	}
	if v, ok := m.get("send"); ok {
		p.send(c, v)
	}
	if hasSource && src.Outside() && !c.Live {
		p.fail(srcNode, at("source"), "%s is outside the cluster, where no probe can be sent from: "+
			"the case must be live (live: true), and may send the traffic (send: [curl, …])", src.Addr)
	}
	if v, ok := required("expect"); ok {
		p.expect(&c.Expect, v, at("expect"))
	}
}

// send reads the command that makes a live case's traffic.
func (p *parser) send(c *Case, n *yaml.Node) {
	field := join(c.Field, "send")
	items, ok := p.sequence(n, field)
	if !ok {
		return
	}
	if len(items) == 0 {
		p.fail(n, field, "want a command and its arguments, got an empty list")
	}
	for i, item := range items {
		if s, ok := p.str(item, index(field, i)); ok {
			c.Send = append(c.Send, s)
		}
	}
	if !c.Live {
		p.fail(n, field, "only a live case (live: true) sends its own traffic")
	}
}

// expect reads a case's expectations.
func (p *parser) expect(e *Expect, n *yaml.Node, field string) {
	m, ok := p.mapping(n, field, "verdict", "nat", "tunnel", "hits", "misses")
	if !ok {
		return
	}
	if len(m.values) == 0 {
		p.fail(resolve(n), field, "no expectations: give at least one of verdict, nat, tunnel, hits or misses")
	}
	if v, ok := m.get("verdict"); ok {
		e.Verdict = p.verdict(v, join(field, "verdict"))
	}
	if v, ok := m.get("nat"); ok {
		e.NAT, e.NATLine = p.nats(v, join(field, "nat")), v.Line
	}
	if v, ok := m.get("tunnel"); ok {
		if s, ok := p.str(v, join(field, "tunnel")); ok {
			if !slices.Contains([]string{"ipip", "vxlan", "none"}, s) {
				p.fail(v, join(field, "tunnel"), "want ipip, vxlan or none, got %q", s)
			}
			e.Tunnel, e.TunnelLine = s, v.Line
		}
	}
	if v, ok := m.get("hits"); ok {
		e.Hits = p.rules(v, join(field, "hits"))
	}
	if v, ok := m.get("misses"); ok {
		e.Misses = p.rules(v, join(field, "misses"))
	}
}

// results are the verdicts a path can end in.
var results = []string{string(trace.Delivered), string(trace.Replied), string(trace.Dropped), string(trace.NoAnswer)}

// verdict reads "replied", or "dropped by GLOB".
func (p *parser) verdict(n *yaml.Node, field string) *Verdict {
	s, ok := p.str(n, field)
	if !ok {
		return nil
	}
	v := &Verdict{Line: n.Line, Result: trace.Result(s)}
	if by, ok := strings.CutPrefix(s, string(trace.Dropped)+" by "); ok {
		v.Result, v.DroppedBy = trace.Dropped, strings.TrimSpace(by)
		if _, err := path.Match(v.DroppedBy, ""); err != nil || v.DroppedBy == "" {
			p.fail(n, field, "%q: want a glob after \"dropped by\", such as KUBE-SVC-*", s)
		}
		return v
	}
	if !slices.Contains(results, s) {
		p.fail(n, field, "want %s, or \"dropped by\" a chain, got %q", list(results), s)
	}
	return v
}

// nats reads the list of expected rewrites; an empty list is kept as an
// empty list, which asserts no NAT.
func (p *parser) nats(n *yaml.Node, field string) []NAT {
	items, ok := p.sequence(n, field)
	if !ok {
		return nil
	}
	out := []NAT{}
	for i, item := range items {
		at := index(field, i)
		m, ok := p.mapping(item, at, "type", "to")
		if !ok {
			continue
		}
		nat := NAT{Line: resolve(item).Line, Field: at}
		if v, ok := m.get("type"); ok {
			if s, ok := p.str(v, join(at, "type")); ok {
				nat.Type = s
				if s != "DNAT" && s != "SNAT" {
					p.fail(v, join(at, "type"), "want DNAT or SNAT, got %q", s)
				}
			}
		} else {
			p.fail(resolve(item), join(at, "type"), "missing: want DNAT or SNAT")
		}
		if v, ok := m.get("to"); ok {
			nat.To = p.address(v, join(at, "to"))
		}
		out = append(out, nat)
	}
	return out
}

// address reads where a NAT leads: one of selector, pod, ip or node, and
// maybe a port.
func (p *parser) address(n *yaml.Node, field string) Address {
	var a Address
	m, ok := p.mapping(n, field, "selector", "pod", "ip", "node", "port")
	if !ok {
		return a
	}
	var given []string
	for _, k := range []string{"selector", "pod", "ip", "node"} {
		if _, ok := m.get(k); ok {
			given = append(given, k)
		}
	}
	if len(given) != 1 {
		p.fail(resolve(n), field, "want exactly one of selector, pod, ip or node, got %d", len(given))
	}
	if v, ok := m.get("selector"); ok {
		if s, ok := p.str(v, join(field, "selector")); ok {
			if sel, err := labels.Parse(s); err != nil || sel.Empty() {
				p.fail(v, join(field, "selector"), "want a label selector such as app=nginx-test, got %q", s)
			}
			a.Selector = s
		}
	}
	if v, ok := m.get("pod"); ok {
		if s, ok := p.str(v, join(field, "pod")); ok {
			ns, name, qualified := strings.Cut(s, "/")
			if !qualified {
				name = s
			}
			if qualified && len(validation.IsDNS1123Label(ns)) > 0 || len(validation.IsDNS1123Subdomain(name)) > 0 {
				p.fail(v, join(field, "pod"), "want NAME or NAMESPACE/NAME of a pod, got %q", s)
			}
			a.Pod = s
		}
	}
	if v, ok := m.get("ip"); ok {
		if s, ok := p.str(v, join(field, "ip")); ok {
			ip, err := netip.ParseAddr(s)
			if err != nil || !ip.Is4() {
				p.fail(v, join(field, "ip"), "want an IPv4 address, got %q", s)
			}
			a.IP = ip
		}
	}
	if v, ok := m.get("node"); ok {
		if s, ok := p.str(v, join(field, "node")); ok {
			if len(validation.IsDNS1123Subdomain(s)) > 0 {
				p.fail(v, join(field, "node"), "want a node's name, got %q", s)
			}
			a.Node = s
		}
	}
	if v, ok := m.get("port"); ok {
		a.Port, _ = p.port(v, join(field, "port"))
	}
	return a
}

// rules reads a list of rule matches.
func (p *parser) rules(n *yaml.Node, field string) []RuleMatch {
	items, ok := p.sequence(n, field)
	if !ok {
		return nil
	}
	var out []RuleMatch
	for i, item := range items {
		at := index(field, i)
		m, ok := p.mapping(item, at, "table", "chain", "rule", "node")
		if !ok {
			continue
		}
		r := RuleMatch{Line: resolve(item).Line, Field: at}
		for _, k := range []struct {
			key  string
			into *string
			glob bool
		}{{"table", &r.Table, true}, {"chain", &r.Chain, true}, {"node", &r.Node, true}, {"rule", &r.Rule, false}} {
			v, ok := m.get(k.key)
			if !ok {
				continue
			}
			s, ok := p.str(v, join(at, k.key))
			if !ok {
				continue
			}
			switch _, err := path.Match(s, ""); {
			case k.glob && (err != nil || s == ""):
				p.fail(v, join(at, k.key), "want a glob such as KUBE-SVC-*, got %q", s)
			case s == "":
				p.fail(v, join(at, k.key), "want a part of the rule's text, got an empty string")
			}
			*k.into = s
		}
		if r.Table == "" && r.Chain == "" && r.Rule == "" {
			p.fail(resolve(item), at, "want at least one of table, chain or rule")
		}
		out = append(out, r)
	}
	return out
}
