package servicenat

import (
	"errors"
	"fmt"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The nfacct counters kube-proxy creates at start and feeds from two of its
// rules, for its metrics kubeproxy_iptables_ct_state_invalid_dropped_packets_total
// and kubeproxy_iptables_localhost_nodeports_accepted_packets_total. The rules
// carry "-m nfacct --nfacct-name" only when the counter exists, since
// iptables rejects a rule naming a missing one.
const (
	CounterInvalidDropped     = "ct_state_invalid_dropped_pkts"
	CounterLocalhostNodePorts = "localhost_nps_accepted_pkts"
)

// From linux/netfilter/nfnetlink_acct.h, which x/sys/unix lacks.
const (
	nfnlMsgAcctNew = 0 // NFNL_MSG_ACCT_NEW
	nfacctName     = 1 // NFACCT_NAME
)

// ensureCounter creates the nfacct object name in netns (nil: the caller's)
// unless it exists, as kube-proxy does at start.
func ensureCounter(netns ns.NetNS, name string) error {
	var cfg netlink.Config
	if netns != nil {
		cfg.NetNS = int(netns.Fd())
	}
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &cfg)
	if err != nil {
		return fmt.Errorf("opening nfnetlink: %w", err)
	}
	defer conn.Close()
	attrs := netlink.NewAttributeEncoder()
	attrs.String(nfacctName, name)
	data, err := attrs.Encode()
	if err != nil {
		return fmt.Errorf("encoding nfacct counter %s: %w", name, err)
	}
	// struct nfgenmsg: family, version, resource id.
	header := []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0}
	_, err = conn.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_ACCT<<8 | nfnlMsgAcctNew),
			Flags: netlink.Request | netlink.Acknowledge | netlink.Create | netlink.Excl,
		},
		Data: append(header, data...),
	})
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("creating nfacct counter %s: %w", name, err)
	}
	return nil
}
