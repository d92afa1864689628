package engine

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/kubectl-nettrace/nettrace/trace"
)

// iptablesTables are the tables iptables-nft keeps in nf_tables; they are
// read through iptables-nft-save (dnatTargets), not here.
var iptablesTables = []string{"filter", "nat", "mangle", "raw", "security"}

// nftDNATTargets does what dnatTargets does for the native nf_tables
// tables of `nft -j list ruleset` (kube-proxy's nftables mode): from every
// nat chain hooked at prerouting or output it walks, as a packet of proto
// to dst would go, the rules, jumps, gotos and verdict maps, and returns
// the destinations of the dnat statements it reaches. A match on the
// destination address, the destination port, the layer 4 protocol or
// whether the destination is local, against a value, a prefix, a range or
// a named or anonymous set, rules a rule out; any other match is taken to
// hold, and a map whose key cannot be computed for the packet (numgen) is
// taken to give every verdict, so the result may hold more than the packet
// meets.
func nftDNATTargets(listing []byte, proto trace.Proto, dst netip.AddrPort, local bool) ([]netip.AddrPort, error) {
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(listing, &doc); err != nil {
		return nil, fmt.Errorf("reading nft -j list ruleset: %w", err)
	}
	w := &nftWalk{
		packet:   nftPacket{proto: string(proto), dst: dst, local: local},
		chains:   map[nftName][]nftRule{},
		elements: map[nftName][]any{},
		seen:     map[nftName]bool{},
	}
	var bases []nftName
	for _, obj := range doc.Nftables {
		for kind, raw := range obj {
			var o struct {
				Family, Table, Name, Chain, Hook string
				Type                             any // a chain's type; a set's, maybe a list
				Expr                             []map[string]any
				Elem                             []any
			}
			if err := json.Unmarshal(raw, &o); err != nil {
				continue // metainfo, or an object the walk does not read
			}
			if o.Family != "ip" && o.Family != "inet" || o.Family == "ip" && slices.Contains(iptablesTables, o.Table) {
				continue
			}
			switch kind {
			case "chain":
				if o.Type == "nat" && (o.Hook == "prerouting" || o.Hook == "output") {
					bases = append(bases, nftName{o.Family, o.Table, o.Name})
				}
			case "rule":
				name := nftName{o.Family, o.Table, o.Chain}
				w.chains[name] = append(w.chains[name], o.Expr)
			case "set", "map":
				w.elements[nftName{o.Family, o.Table, o.Name}] = o.Elem
			}
		}
	}
	for _, b := range bases {
		w.chain(b)
	}
	return w.targets, nil
}

// nftName names a chain, set or map: family, table, name.
type nftName struct{ family, table, name string }

// nftRule is a rule's statements, as nft's JSON gives them.
type nftRule []map[string]any

// nftPacket is what the walk knows of the packet.
type nftPacket struct {
	proto string
	dst   netip.AddrPort
	local bool
}

// nftWalk is one walk of nftDNATTargets.
type nftWalk struct {
	packet   nftPacket
	chains   map[nftName][]nftRule
	elements map[nftName][]any // the elements of sets and maps
	seen     map[nftName]bool
	targets  []netip.AddrPort
}

func (w *nftWalk) chain(name nftName) {
	if w.seen[name] {
		return
	}
	w.seen[name] = true
	for _, rule := range w.chains[name] {
		w.rule(name, rule)
	}
}

// rule follows the rule's statements while its matches may hold.
func (w *nftWalk) rule(in nftName, rule nftRule) {
	for _, stmt := range rule {
		switch {
		case stmt["match"] != nil:
			m, _ := stmt["match"].(map[string]any)
			v, known := w.packet.value(m["left"])
			if !known {
				continue
			}
			hit := w.equal(in, v, m["right"])
			if m["op"] == "!=" {
				hit = !hit
			}
			if !hit {
				return
			}
		case stmt["vmap"] != nil:
			m, _ := stmt["vmap"].(map[string]any)
			v, known := w.packet.value(m["key"])
			for _, elem := range w.setElements(in, m["data"]) {
				pair, _ := elem.([]any)
				if len(pair) == 2 && (!known || w.equal(in, v, pair[0])) {
					w.verdict(in, pair[1])
				}
			}
		case stmt["jump"] != nil || stmt["goto"] != nil:
			w.verdict(in, stmt)
		case stmt["dnat"] != nil:
			m, _ := stmt["dnat"].(map[string]any)
			w.dnat(m)
		}
	}
}

// verdict walks the chain a jump or goto verdict names.
func (w *nftWalk) verdict(in nftName, v any) {
	m, _ := v.(map[string]any)
	for _, kind := range []string{"jump", "goto"} {
		if to, ok := m[kind].(map[string]any); ok {
			if target, ok := to["target"].(string); ok {
				w.chain(nftName{in.family, in.table, target})
			}
		}
	}
}

// dnat collects a dnat statement's destinations: its address and port (the
// packet's port when it names none), or, when it maps a key to address and
// port (kube-proxy picks an endpoint with numgen), every one it maps to.
func (w *nftWalk) dnat(m map[string]any) {
	port := w.packet.dst.Port()
	if p, ok := m["port"].(float64); ok {
		port = uint16(p)
	}
	if s, ok := m["addr"].(string); ok {
		w.addTarget(s, port)
		return
	}
	mapped, _ := m["addr"].(map[string]any)
	inner, _ := mapped["map"].(map[string]any)
	data, _ := inner["data"].(map[string]any)
	elems, _ := data["set"].([]any)
	for _, elem := range elems {
		pair, _ := elem.([]any)
		if len(pair) != 2 {
			continue
		}
		to, _ := pair[1].(map[string]any)
		parts, _ := to["concat"].([]any)
		if len(parts) != 2 {
			continue
		}
		s, _ := parts[0].(string)
		if p, ok := parts[1].(float64); ok {
			w.addTarget(s, uint16(p))
		}
	}
}

func (w *nftWalk) addTarget(addr string, port uint16) {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return
	}
	if to := netip.AddrPortFrom(a, port); !slices.Contains(w.targets, to) {
		w.targets = append(w.targets, to)
	}
}

// value computes an expression for the packet: its destination address,
// destination port, layer 4 protocol, the fib type of its destination, or
// a concatenation of these; known is false for anything else.
func (p nftPacket) value(expr any) (v any, known bool) {
	m, _ := expr.(map[string]any)
	switch {
	case m["payload"] != nil:
		pl, _ := m["payload"].(map[string]any)
		switch field := pl["field"]; {
		case pl["protocol"] == "ip" && field == "daddr":
			return p.dst.Addr().String(), true
		case field == "dport" && (pl["protocol"] == "th" || pl["protocol"] == p.proto):
			return float64(p.dst.Port()), true
		}
	case m["meta"] != nil:
		if meta, _ := m["meta"].(map[string]any); meta["key"] == "l4proto" {
			return p.proto, true
		}
	case m["fib"] != nil:
		if fib, _ := m["fib"].(map[string]any); fib["result"] == "type" {
			if p.local {
				return "local", true
			}
			return "unicast", true
		}
	case m["concat"] != nil:
		parts, _ := m["concat"].([]any)
		var values []any
		for _, part := range parts {
			v, ok := p.value(part)
			if !ok {
				return nil, false
			}
			values = append(values, v)
		}
		return values, true
	}
	return nil, false
}

// equal reports whether a computed value is, or is in, the right-hand side
// of a match or the key of a map element.
func (w *nftWalk) equal(in nftName, v any, right any) bool {
	switch r := right.(type) {
	case string:
		if name, ok := strings.CutPrefix(r, "@"); ok {
			return slices.ContainsFunc(w.elements[nftName{in.family, in.table, name}], func(e any) bool { return w.equal(in, v, e) })
		}
		s, _ := v.(string)
		return s == r
	case float64:
		n, _ := v.(float64)
		return n == r
	case []any: // a map element: key and value
		return len(r) == 2 && w.equal(in, v, r[0])
	case map[string]any:
		switch {
		case r["set"] != nil:
			elems, _ := r["set"].([]any)
			return slices.ContainsFunc(elems, func(e any) bool { return w.equal(in, v, e) })
		case r["prefix"] != nil:
			pr, _ := r["prefix"].(map[string]any)
			s, _ := v.(string)
			addr, err1 := netip.ParseAddr(s)
			base, err2 := netip.ParseAddr(fmt.Sprint(pr["addr"]))
			bits, _ := pr["len"].(float64)
			prefix, err3 := base.Prefix(int(bits))
			return err1 == nil && err2 == nil && err3 == nil && prefix.Contains(addr)
		case r["range"] != nil:
			bounds, _ := r["range"].([]any)
			n, ok := v.(float64)
			lo, ok1 := bounds[0].(float64)
			hi, ok2 := bounds[1].(float64)
			return ok && ok1 && ok2 && n >= lo && n <= hi
		case r["concat"] != nil:
			parts, _ := r["concat"].([]any)
			values, _ := v.([]any)
			if len(parts) != len(values) {
				return false
			}
			for i := range parts {
				if !w.equal(in, values[i], parts[i]) {
					return false
				}
			}
			return true
		case r["elem"] != nil: // an element with a timeout or comment
			e, _ := r["elem"].(map[string]any)
			return w.equal(in, v, e["val"])
		}
	}
	return false
}

// setElements returns the elements of a named set or map ("@name") or of
// an anonymous one.
func (w *nftWalk) setElements(in nftName, data any) []any {
	switch d := data.(type) {
	case string:
		if name, ok := strings.CutPrefix(d, "@"); ok {
			return w.elements[nftName{in.family, in.table, name}]
		}
	case map[string]any:
		if elems, ok := d["set"].([]any); ok {
			return elems
		}
	}
	return nil
}
