package loadbalancer

import (
	"fmt"
	"net/netip"
)

// pool hands the addresses of a prefix to services, one address per service.
// Every address of the prefix is usable, the first and the last included:
// they are addresses on a shared underlay, not a subnet of their own. A pool
// is owned by one goroutine.
type pool struct {
	prefix    netip.Prefix
	byAddr    map[netip.Addr]string // address -> service key
	byService map[string]netip.Addr // service key -> address
}

func newPool(prefix netip.Prefix) *pool {
	return &pool{
		prefix:    prefix.Masked(),
		byAddr:    make(map[netip.Addr]string),
		byService: make(map[string]netip.Addr),
	}
}

// contains reports whether addr is one of the pool's addresses.
func (p *pool) contains(addr netip.Addr) bool {
	return p.prefix.Contains(addr)
}

// assigned returns the address held by service, if any.
func (p *pool) assigned(service string) (netip.Addr, bool) {
	addr, ok := p.byService[service]
	return addr, ok
}

// assign gives addr to service, unless another service holds addr or
// service holds another address.
func (p *pool) assign(service string, addr netip.Addr) error {
	if !p.contains(addr) {
		return fmt.Errorf("%s is not in pool %s", addr, p.prefix)
	}
	if holder, ok := p.byAddr[addr]; ok && holder != service {
		return fmt.Errorf("%s is already used by %s", addr, holder)
	}
	if held, ok := p.byService[service]; ok && held != addr {
		return fmt.Errorf("%s already holds %s", service, held)
	}
	p.byAddr[addr] = service
	p.byService[service] = addr
	return nil
}

// allocate gives service, which must hold no address yet, the lowest free
// address. It returns false when the pool is exhausted.
func (p *pool) allocate(service string) (netip.Addr, bool) {
	for addr := p.prefix.Addr(); p.prefix.Contains(addr); addr = addr.Next() {
		if _, used := p.byAddr[addr]; !used {
			p.byAddr[addr] = service
			p.byService[service] = addr
			return addr, true
		}
	}
	return netip.Addr{}, false
}

// release frees the address held by service and returns it.
func (p *pool) release(service string) (netip.Addr, bool) {
	addr, ok := p.byService[service]
	if ok {
		delete(p.byService, service)
		delete(p.byAddr, addr)
	}
	return addr, ok
}
